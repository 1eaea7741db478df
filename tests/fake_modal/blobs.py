"""An S3-like blob store on 127.0.0.1: what BlobCreate and BlobGet URLs point at.

The client uploads with a PUT (checking the quoted MD5 ETag it gets back) or, for a
multipart upload, one PUT per part and a POST to a completion URL whose answer must hold
the combined ETag; it downloads with a GET. See modal/_utils/blob_utils.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import socket
import uuid

from aiohttp import web

MAX_BODY_BYTES = 4 * 1024**3


@dataclasses.dataclass
class _Upload:
    """A blob announced by BlobCreate and not yet (fully) uploaded."""

    content_length: int
    parts: dict[int, bytes] = dataclasses.field(default_factory=dict)


class BlobStore:
    """Blobs in memory, served over HTTP with the URLs the control plane hands out."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.uploads = 0  # finished uploads over HTTP (single or multipart)
        self.downloads = 0  # GETs served
        self.parts = 0  # parts received by multipart uploads
        self._pending: dict[str, _Upload] = {}
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self, host: str = "127.0.0.1") -> None:
        """Serve on a free port of `host`."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.add_routes(
            [
                web.put("/blob/{blob_id}", self._put),
                web.put("/blob/{blob_id}/part/{number}", self._put_part),
                web.post("/blob/{blob_id}/complete", self._complete),
                web.get("/blob/{blob_id}", self._get),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # IPPROTO_TCP, not 0: only then does asyncio set TCP_NODELAY on accepted connections
        # (without it every small response waits ~40 ms for a delayed ACK).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind((host, 0))
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.base_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def create(self, content_length: int) -> str:
        """Announce an upload; returns the new blob id."""
        blob_id = f"bl-{uuid.uuid4().hex}"
        self._pending[blob_id] = _Upload(content_length)
        return blob_id

    def put(self, data: bytes) -> str:
        """Store bytes made by the control plane itself (large outputs); returns the blob id."""
        blob_id = f"bl-{uuid.uuid4().hex}"
        self.blobs[blob_id] = data
        return blob_id

    def upload_url(self, blob_id: str) -> str:
        """Where a single-part upload PUTs the bytes."""
        return f"{self.base_url}/blob/{blob_id}"

    def part_urls(self, blob_id: str, part_length: int, content_length: int) -> list[str]:
        """Where a multipart upload PUTs each part."""
        count = max(1, math.ceil(content_length / part_length))
        return [f"{self.base_url}/blob/{blob_id}/part/{number}" for number in range(1, count + 1)]

    def completion_url(self, blob_id: str) -> str:
        """Where a multipart upload POSTs its completion."""
        return f"{self.base_url}/blob/{blob_id}/complete"

    def download_url(self, blob_id: str) -> str:
        """Where BlobGet sends the client."""
        return f"{self.base_url}/blob/{blob_id}"

    async def _put(self, request: web.Request) -> web.Response:
        blob_id = request.match_info["blob_id"]
        if blob_id not in self._pending:
            return web.Response(status=404, text="NoSuchUpload")
        data = await request.read()
        del self._pending[blob_id]
        self.blobs[blob_id] = data
        self.uploads += 1
        return web.Response(headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    async def _put_part(self, request: web.Request) -> web.Response:
        blob_id = request.match_info["blob_id"]
        upload = self._pending.get(blob_id)
        if upload is None:
            return web.Response(status=404, text="NoSuchUpload")
        data = await request.read()
        upload.parts[int(request.match_info["number"])] = data
        self.parts += 1
        return web.Response(headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    async def _complete(self, request: web.Request) -> web.Response:
        blob_id = request.match_info["blob_id"]
        upload = self._pending.pop(blob_id, None)
        if upload is None:
            return web.Response(status=404, text="NoSuchUpload")
        await request.read()
        parts = [upload.parts[number] for number in sorted(upload.parts)]
        self.blobs[blob_id] = b"".join(parts)
        self.uploads += 1
        digests = b"".join(hashlib.md5(part).digest() for part in parts)
        etag = f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"
        body = (
            "<CompleteMultipartUploadResult>"
            f"<ETag>&quot;{etag}&quot;</ETag>"
            "</CompleteMultipartUploadResult>"
        )
        return web.Response(text=body, content_type="application/xml")

    async def _get(self, request: web.Request) -> web.Response:
        data = self.blobs.get(request.match_info["blob_id"])
        if data is None:
            return web.Response(status=404, text="NoSuchKey")
        self.downloads += 1
        return web.Response(body=data, content_type="application/octet-stream")
