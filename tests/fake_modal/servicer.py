"""The gRPC face of the fake: the ModalClient methods the client uses to call functions
(and to read a call's logs).

Every other method of the service answers UNIMPLEMENTED (the client's own
`patch_mock_servicer` fills them in), so a flow the fake does not know fails loudly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import TYPE_CHECKING

from google.protobuf import empty_pb2
from grpclib import GRPCError, Status
from grpclib.events import RecvRequest
from modal._utils.blob_utils import BLOCK_SIZE
from modal._utils.grpc_testing import patch_mock_servicer
from modal_proto import api_grpc, api_pb2

from .control import ControlPlane
from .volumes import copy_files, inside, list_files, put_file, remove_file
from .workers import CONTAINER_MARK

if TYPE_CHECKING:
    from grpclib.server import Stream


_LIST_BATCH = 100  # entries per VolumeListFiles message


def _container(stream: Stream[object, object]) -> str:
    """Which worker ("container") sent a request; "" for any other client."""
    token_id = str(stream.metadata.get("x-modal-token-id") if stream.metadata else "")
    return token_id if CONTAINER_MARK in token_id else ""


def _fake_jwt(lifetime: float = 3600.0) -> str:
    """A token the client can decode for its expiry (it never checks a signature)."""

    def part(payload: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'exp': int(time.time() + lifetime)})}.fake"


@patch_mock_servicer
class FakeModalServicer(api_grpc.ModalClientBase):
    """Answers the client's RPCs from a ControlPlane."""

    def __init__(self, control: ControlPlane, token_id: str, token_secret: str) -> None:
        self.control = control
        self.token_id = token_id
        self.token_secret = token_secret

    async def on_request(self, event: RecvRequest) -> None:
        """Count, authenticate, delay, and fail (if asked to) every incoming request."""
        method = event.method_name.rsplit("/", 1)[-1]
        self.control.rpc_counts[method] += 1
        self.control.rpc_log.append(method)
        metadata = event.metadata
        if metadata.get("x-modal-client-type") == str(api_pb2.CLIENT_TYPE_CLIENT):
            token_id = str(metadata.get("x-modal-token-id"))
            if token_id.startswith(self.token_id + CONTAINER_MARK):  # A worker's own.
                token_id = self.token_id
            credentials = (token_id, metadata.get("x-modal-token-secret"))
            if credentials != (self.token_id, self.token_secret):
                raise GRPCError(Status.UNAUTHENTICATED, "Invalid token id or secret")
        if self.control.latency > 0:
            await asyncio.sleep(self.control.latency)
        fault = self.control.take_rpc_fault(method)
        if fault is not None:
            raise GRPCError(fault.status, fault.message)

    # ----- connection -----

    async def ClientHello(
        self, stream: Stream[empty_pb2.Empty, api_pb2.ClientHelloResponse]
    ) -> None:
        """What `Client.hello()` and `modal token` checks call."""
        await stream.recv_message()
        await stream.send_message(api_pb2.ClientHelloResponse())

    async def AuthTokenGet(
        self, stream: Stream[api_pb2.AuthTokenGetRequest, api_pb2.AuthTokenGetResponse]
    ) -> None:
        """A short-lived token (used by the client for input-plane calls)."""
        await stream.recv_message()
        await stream.send_message(api_pb2.AuthTokenGetResponse(token=_fake_jwt()))

    # ----- functions -----

    async def FunctionGet(
        self, stream: Stream[api_pb2.FunctionGetRequest, api_pb2.FunctionGetResponse]
    ) -> None:
        """Hydrate `Function.from_name(app, name, environment_name=...)`."""
        request = await stream.recv_message()
        assert request is not None
        spec = self.control.lookup_function(
            request.environment_name, request.app_name, request.object_tag
        )
        variant = self.control.variant(spec.function_id)
        await stream.send_message(
            api_pb2.FunctionGetResponse(
                function_id=spec.function_id,
                handle_metadata=self.control.handle_metadata(variant),
                function=self.control.function_data(variant),
            )
        )

    async def FunctionGetById(
        self, stream: Stream[api_pb2.FunctionGetByIdRequest, api_pb2.FunctionGetByIdResponse]
    ) -> None:
        """Hydrate `Function.from_id(function_id)`."""
        request = await stream.recv_message()
        assert request is not None
        variant = self.control.variant(request.function_id)
        await stream.send_message(
            api_pb2.FunctionGetByIdResponse(
                handle_metadata=self.control.handle_metadata(variant),
                function=self.control.function_data(variant),
            )
        )

    async def FunctionBindParams(
        self,
        stream: Stream[api_pb2.FunctionBindParamsRequest, api_pb2.FunctionBindParamsResponse],
    ) -> None:
        """Hydrate `fn.with_options(...)`: a variant with its own function id."""
        request = await stream.recv_message()
        assert request is not None
        variant = self.control.bind(request)
        await stream.send_message(
            api_pb2.FunctionBindParamsResponse(
                bound_function_id=variant.function_id,
                handle_metadata=self.control.handle_metadata(variant),
            )
        )

    async def SecretGetOrCreate(
        self,
        stream: Stream[api_pb2.SecretGetOrCreateRequest, api_pb2.SecretGetOrCreateResponse],
    ) -> None:
        """Hydrate `Secret.from_name(name)`."""
        request = await stream.recv_message()
        assert request is not None
        secret = self.control.secret(request)
        metadata = api_pb2.SecretMetadata(
            name=secret.name, environment_name=secret.environment, keys=sorted(secret.values)
        )
        await stream.send_message(
            api_pb2.SecretGetOrCreateResponse(secret_id=secret.object_id, metadata=metadata)
        )

    async def VolumeGetOrCreate(
        self,
        stream: Stream[api_pb2.VolumeGetOrCreateRequest, api_pb2.VolumeGetOrCreateResponse],
    ) -> None:
        """Hydrate `Volume.from_name(name)`."""
        request = await stream.recv_message()
        assert request is not None
        volume = self.control.volume(request)
        version = request.version or api_pb2.VOLUME_FS_VERSION_V1
        await stream.send_message(
            api_pb2.VolumeGetOrCreateResponse(
                volume_id=volume.object_id,
                version=version,
                metadata=api_pb2.VolumeMetadata(name=volume.name, version=version),
            )
        )

    async def VolumeReload(
        self, stream: Stream[api_pb2.VolumeReloadRequest, empty_pb2.Empty]
    ) -> None:
        """The calling container commits, then sees the committed files (volumes.py)."""
        request = await stream.recv_message()
        assert request is not None
        committed = self.control.volume_dir(request.volume_id)
        self.control.volume_views.reload(committed, request.volume_id, _container(stream))
        await stream.send_message(empty_pb2.Empty())

    async def VolumeCommit(
        self, stream: Stream[api_pb2.VolumeCommitRequest, api_pb2.VolumeCommitResponse]
    ) -> None:
        """The calling container's changes become the committed files (counted too)."""
        request = await stream.recv_message()
        assert request is not None
        committed = self.control.volume_dir(request.volume_id)
        self.control.volume_views.commit(committed, request.volume_id, _container(stream))
        await stream.send_message(api_pb2.VolumeCommitResponse(skip_reload=True))

    async def VolumeGetFile2(
        self, stream: Stream[api_pb2.VolumeGetFile2Request, api_pb2.VolumeGetFile2Response]
    ) -> None:
        """`Volume.read_file`: the file's blocks as blobs to download."""
        request = await stream.recv_message()
        assert request is not None
        path = inside(self.control.volume_dir(request.volume_id), request.path)
        if not path.is_file():
            raise GRPCError(Status.NOT_FOUND, f"No such file: {request.path}")
        data = path.read_bytes()
        blocks = [data[at : at + BLOCK_SIZE] for at in range(0, len(data), BLOCK_SIZE)]
        urls = [
            self.control.blob_store.download_url(self.control.blob_store.put(block))
            for block in blocks
        ]
        await stream.send_message(
            api_pb2.VolumeGetFile2Response(get_urls=urls, size=len(data), start=0, len=len(data))
        )

    async def VolumeListFiles(
        self, stream: Stream[api_pb2.VolumeListFilesRequest, api_pb2.VolumeListFilesResponse]
    ) -> None:
        """`Volume.listdir` / `iterdir`: entries in batches, as the server streams them."""
        request = await stream.recv_message()
        assert request is not None
        committed = self.control.volume_dir(request.volume_id)
        entries = list_files(committed, request.path, request.recursive)
        for at in range(0, max(len(entries), 1), _LIST_BATCH):
            batch = entries[at : at + _LIST_BATCH]
            await stream.send_message(api_pb2.VolumeListFilesResponse(entries=batch))

    async def MountPutFile(
        self, stream: Stream[api_pb2.MountPutFileRequest, api_pb2.MountPutFileResponse]
    ) -> None:
        """A file's content, by SHA-256: asked for first, then sent inline or as a blob."""
        request = await stream.recv_message()
        assert request is not None
        files = self.control.mount_files
        if request.HasField("data"):
            files[request.sha256_hex] = request.data
        elif request.HasField("data_blob_id"):
            blob = self.control.blob_store.blobs.get(request.data_blob_id)
            if blob is None:
                raise GRPCError(Status.NOT_FOUND, f"Blob '{request.data_blob_id}' not found")
            files[request.sha256_hex] = blob
        await stream.send_message(api_pb2.MountPutFileResponse(exists=request.sha256_hex in files))

    async def VolumePutFiles(
        self, stream: Stream[api_pb2.VolumePutFilesRequest, empty_pb2.Empty]
    ) -> None:
        """`batch_upload`: each file, from the content MountPutFile holds, committed at once."""
        request = await stream.recv_message()
        assert request is not None
        committed = self.control.volume_dir(request.volume_id)
        overwrite = not request.disallow_overwrite_existing_files
        for file in request.files:
            data = self.control.mount_files.get(file.sha256_hex)
            if data is None:
                raise GRPCError(Status.FAILED_PRECONDITION, f"{file.filename} not uploaded")
            put_file(committed, file.filename, data, file.mode, overwrite)
        await stream.send_message(empty_pb2.Empty())

    async def VolumeRemoveFile(
        self, stream: Stream[api_pb2.VolumeRemoveFileRequest, empty_pb2.Empty]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        committed = self.control.volume_dir(request.volume_id)
        remove_file(committed, request.path, request.recursive)
        await stream.send_message(empty_pb2.Empty())

    async def VolumeCopyFiles(
        self, stream: Stream[api_pb2.VolumeCopyFilesRequest, empty_pb2.Empty]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        committed = self.control.volume_dir(request.volume_id)
        copy_files(committed, list(request.src_paths), request.dst_path)
        await stream.send_message(empty_pb2.Empty())

    # ----- dicts (where the executor keeps code packages and launch locks) -----

    async def DictGetOrCreate(
        self, stream: Stream[api_pb2.DictGetOrCreateRequest, api_pb2.DictGetOrCreateResponse]
    ) -> None:
        """Hydrate `Dict.from_name(name, create_if_missing=...)`."""
        request = await stream.recv_message()
        assert request is not None
        record = self.control.dict(request)
        await stream.send_message(
            api_pb2.DictGetOrCreateResponse(
                dict_id=record.object_id,
                metadata=api_pb2.DictMetadata(name=record.name),
            )
        )

    async def DictContains(
        self, stream: Stream[api_pb2.DictContainsRequest, api_pb2.DictContainsResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        entries = self.control.dict_by_id(request.dict_id).entries
        await stream.send_message(api_pb2.DictContainsResponse(found=request.key in entries))

    async def DictGet(
        self, stream: Stream[api_pb2.DictGetRequest, api_pb2.DictGetResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        entries = self.control.dict_by_id(request.dict_id).entries
        found = request.key in entries
        await stream.send_message(
            api_pb2.DictGetResponse(found=found, value=entries.get(request.key, b""))
        )

    async def DictPop(
        self, stream: Stream[api_pb2.DictPopRequest, api_pb2.DictPopResponse]
    ) -> None:
        request = await stream.recv_message()
        assert request is not None
        entries = self.control.dict_by_id(request.dict_id).entries
        found = request.key in entries
        value = entries.pop(request.key, b"")
        await stream.send_message(api_pb2.DictPopResponse(found=found, value=value))

    async def DictUpdate(
        self, stream: Stream[api_pb2.DictUpdateRequest, api_pb2.DictUpdateResponse]
    ) -> None:
        """`put` and `update`; `if_not_exists` keeps existing keys (and says nothing was made)."""
        request = await stream.recv_message()
        assert request is not None
        entries = self.control.dict_by_id(request.dict_id).entries
        created = False
        for update in request.updates:
            if request.if_not_exists and update.key in entries:
                continue
            entries[update.key] = update.value
            created = True
        await stream.send_message(api_pb2.DictUpdateResponse(created=created))

    # ----- calls -----

    async def FunctionMap(
        self, stream: Stream[api_pb2.FunctionMapRequest, api_pb2.FunctionMapResponse]
    ) -> None:
        """Create a function call; its inputs come pipelined here (or via FunctionPutInputs)."""
        request = await stream.recv_message()
        assert request is not None
        call = self.control.new_call(request.function_id, request.function_call_invocation_type)
        response = api_pb2.FunctionMapResponse(
            function_call_id=call.call_id,
            function_call_jwt=f"jwt-{call.call_id}",
            retry_policy=call.variant.retry_policy(),
            sync_client_retries_enabled=False,  # this server retries, as for spawned calls
        )
        if self.control.pipeline_inputs:
            accepted = self.control.put_inputs(call, request.pipelined_inputs)
            response.pipelined_inputs.extend(accepted)
        await stream.send_message(response)

    async def FunctionPutInputs(
        self, stream: Stream[api_pb2.FunctionPutInputsRequest, api_pb2.FunctionPutInputsResponse]
    ) -> None:
        """Add inputs to a function call."""
        request = await stream.recv_message()
        assert request is not None
        call = self.control.call(request.function_call_id)
        accepted = self.control.put_inputs(call, request.inputs)
        await stream.send_message(api_pb2.FunctionPutInputsResponse(inputs=accepted))

    async def FunctionFinishInputs(
        self, stream: Stream[api_pb2.FunctionFinishInputsRequest, empty_pb2.Empty]
    ) -> None:
        """A map call has all its inputs."""
        request = await stream.recv_message()
        assert request is not None
        self.control.finish_inputs(self.control.call(request.function_call_id), request.num_inputs)
        await stream.send_message(empty_pb2.Empty())

    async def FunctionGetOutputs(
        self,
        stream: Stream[api_pb2.FunctionGetOutputsRequest, api_pb2.FunctionGetOutputsResponse],
    ) -> None:
        """Long-poll for outputs: wait up to the request's timeout, then answer empty."""
        request = await stream.recv_message()
        assert request is not None
        await stream.send_message(await self.control.get_outputs(request))

    async def FunctionCallFromId(
        self,
        stream: Stream[api_pb2.FunctionCallFromIdRequest, api_pb2.FunctionCallFromIdResponse],
    ) -> None:
        """Metadata of a function call (`FunctionCall.num_inputs()` and the like)."""
        request = await stream.recv_message()
        assert request is not None
        call = self.control.call(request.function_call_id)
        await stream.send_message(
            api_pb2.FunctionCallFromIdResponse(
                function_call_id=call.call_id,
                num_inputs=len(call.inputs),
                metadata=api_pb2.FunctionCallHandleMetadata(
                    app_id=call.variant.spec.app_id, function_id=call.variant.function_id
                ),
            )
        )

    async def FunctionCallCancel(
        self, stream: Stream[api_pb2.FunctionCallCancelRequest, empty_pb2.Empty]
    ) -> None:
        """Cancel a call; answers once its running inputs' workers are gone."""
        request = await stream.recv_message()
        assert request is not None
        await self.control.cancel(request.function_call_id)
        await stream.send_message(empty_pb2.Empty())

    # ----- logs -----

    async def AppFetchLogs(
        self, stream: Stream[api_pb2.AppFetchLogsRequest, api_pb2.AppFetchLogsResponse]
    ) -> None:
        """A time range of an app's logs, filtered: what `FunctionCall.logs.tail()` asks for."""
        request = await stream.recv_message()
        assert request is not None
        await stream.send_message(self.control.fetch_logs(request))

    # ----- blobs -----

    async def BlobCreate(
        self, stream: Stream[api_pb2.BlobCreateRequest, api_pb2.BlobCreateResponse]
    ) -> None:
        """Hand out an upload URL (or part URLs, for a large blob) on the blob store."""
        request = await stream.recv_message()
        assert request is not None
        store = self.control.blob_store
        blob_id = store.create(request.content_length)
        response = api_pb2.BlobCreateResponse(blob_id=blob_id, blob_ids=[blob_id])
        if request.content_length > self.control.blob_multipart_threshold:
            part_length = self.control.blob_part_length
            upload = api_pb2.MultiPartUpload(
                part_length=part_length,
                upload_urls=store.part_urls(blob_id, part_length, request.content_length),
                completion_url=store.completion_url(blob_id),
            )
            response.multiparts.items.append(upload)
        else:
            response.upload_urls.items.append(store.upload_url(blob_id))
        await stream.send_message(response)

    async def BlobGet(
        self, stream: Stream[api_pb2.BlobGetRequest, api_pb2.BlobGetResponse]
    ) -> None:
        """Hand out a download URL for a stored blob."""
        request = await stream.recv_message()
        assert request is not None
        if request.blob_id not in self.control.blob_store.blobs:
            raise GRPCError(Status.NOT_FOUND, f"Blob '{request.blob_id}' not found")
        url = self.control.blob_store.download_url(request.blob_id)
        await stream.send_message(api_pb2.BlobGetResponse(download_url=url))
