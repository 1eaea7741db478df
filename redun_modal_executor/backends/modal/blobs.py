"""Big payloads to and from Modal's blob store through files, so that the scheduler holds no
copy of them beyond the payload itself.

The client's own path copies: ``_create_input`` pickles the arguments into a second buffer,
and its multipart upload of a buffer copies the whole buffer once per part
(``BytesIO(memoryview)`` copies); ``blob_download`` reads a result whole, and unpickling it
makes a second copy. Here a call's arguments are pickled, as the client pickles them
(``modal._serialization.Pickler``), straight into a temporary file: the C pickler writes a
big ``bytes`` through to the file without copying it. The client uploads a file by reading
each part from its own handle. A result blob is streamed into a temporary file, and the
envelope is read from inside the client's pickle there. Both use private client parts, and
so run on the tested modal releases only (see ``client``).
"""

from __future__ import annotations

import asyncio
import pickle
import tempfile
from typing import IO, Any

# Payloads from this size go through a file; smaller ones take the client's in-memory path,
# whose copies are small. (The client's own threshold for uploading files as blobs.)
SPOOL_BYTES = 4 * 1024 * 1024
# Attempts at a download, as the client's ``blob_download`` makes.
DOWNLOAD_ATTEMPTS = 5


async def upload_arguments(payload: bytes, stub: Any) -> tuple[str, list[Any]]:
    """Upload ``((payload,), {})``, pickled in Modal's format: the blob id, and the upload's
    results for ``FunctionPutInputsItem.blob_upload_results``."""
    from modal._utils.blob_utils import _blob_upload

    with tempfile.NamedTemporaryFile(prefix="redun-modal-", suffix=".args") as spool:
        hashes = await asyncio.to_thread(_spool_arguments, payload, spool)
        # Multipart uploads open the file by name, a handle per part.
        return await _blob_upload(hashes, spool, stub)


def _spool_arguments(payload: bytes, spool: IO[bytes]) -> Any:
    """Pickle the arguments into ``spool`` and hash them (blocking); rewound."""
    from modal._serialization import Pickler
    from modal._utils.hash_utils import get_upload_hashes

    Pickler(spool).dump(((payload,), {}))
    spool.flush()
    spool.seek(0)
    return get_upload_hashes(spool)  # Reads in chunks, and rewinds.


async def download_envelope(blob_id: str, stub: Any, client: Any) -> IO[bytes]:
    """The result envelope in blob ``blob_id`` (a pickled ``bytes``, as the container returns
    it): a file positioned at its first byte. The caller closes it."""
    from modal._utils.async_utils import retry

    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    try:
        await retry(n_attempts=DOWNLOAD_ATTEMPTS, base_delay=0.1, attempt_timeout=None)(_download)(
            blob_id, stub, spool
        )
        return await asyncio.to_thread(_at_envelope, spool, client)
    except BaseException:
        spool.close()
        raise


async def _download(blob_id: str, stub: Any, spool: IO[bytes]) -> None:
    from modal._utils.blob_utils import blob_iter

    spool.seek(0)
    spool.truncate()
    async for chunk in blob_iter(blob_id, stub):
        spool.write(chunk)  # To the page cache, or memory while small: not worth a thread.


def _at_envelope(spool: IO[bytes], client: Any) -> IO[bytes]:
    """``spool`` positioned at the ``bytes`` its pickle holds; a pickle of another shape (not
    one this client's release makes) is loaded whole, as the client would."""
    spool.seek(0)
    where = pickled_bytes_span(spool.read(_HEAD_BYTES))
    if where is not None:
        start, length = where
        spool.seek(start + length)
        if _is_trailer(spool.read(_HEAD_BYTES)):
            spool.seek(start)
            return spool
    from modal._serialization import deserialize

    spool.seek(0)
    envelope = deserialize(spool.read(), client)
    spool.seek(0)
    spool.truncate()
    spool.write(envelope)
    spool.seek(0)
    return spool


# The opcodes around one pickled ``bytes``: PROTO, an optional FRAME, the bytes' opcode and
# length, the bytes, then MEMOIZE and STOP (after a FRAME, for a small one).
_HEAD_BYTES = 32
_LENGTH_WIDTHS = {pickle.SHORT_BINBYTES: 1, pickle.BINBYTES: 4, pickle.BINBYTES8: 8}
_FRAME_BYTES = 9


def pickled_bytes_span(head: bytes) -> tuple[int, int] | None:
    """Where the contents of the pickled ``bytes`` that ``head`` begins start, and their
    length; None if ``head`` does not begin one."""
    at = 0
    if head[at : at + 1] == pickle.PROTO:
        at += 2
    if head[at : at + 1] == pickle.FRAME:
        at += _FRAME_BYTES
    width = _LENGTH_WIDTHS.get(head[at : at + 1])
    if width is None or len(head) < at + 1 + width:
        return None
    length = int.from_bytes(head[at + 1 : at + 1 + width], "little")
    return at + 1 + width, length


def _is_trailer(rest: bytes) -> bool:
    if rest[:1] == pickle.FRAME:
        rest = rest[_FRAME_BYTES:]
    return rest in (pickle.STOP, pickle.MEMOIZE + pickle.STOP)
