"""kvtier for asyncio (grpc.aio): Client, RouterClient and WorkerClient with the methods of the
blocking clients, as coroutines.

    import kvtier.aio

    async def serve(prompt):
        async with kvtier.aio.Client(address, tenant="acme") as kv:
            cached = (await kv.lookup(keys)).matched
            blocks = await kv.get(keys[:cached])

Arguments, results, checks and errors (KvtierError) are those of kvtier.Client,
kvtier.RouterClient and kvtier.WorkerClient; the requests are built and the answers read by the
same code. Make a client inside a running event loop (grpc.aio binds its channel to it), and
close it with `await client.close()` or `async with`.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import grpc

from kvtier import _dataplane
from kvtier import router as _router
from kvtier import worker as _worker
from kvtier._grpc import ChannelOwner, KvtierError, Pem, aio_channel
from kvtier.client import (Block, CacheClientBase, Lease, Lookup, PutResult, _ArrivedDamaged,
                           _check_blocks, _GetAnswers, _keys_field, _lease_of, _lease_request,
                           _lookup_of, _put_requests, _stats_of)
from kvtier.keys import KvLayout, check_keys
from kvtier.router import Member, Route
from kvtier.v1 import attention_pb2_grpc, cache_pb2, router_pb2, router_pb2_grpc
from kvtier.worker import DecodeResult, SequenceQuery

__all__ = ["Client", "RouterClient", "WorkerClient", "KvtierError"]


class _AsyncClosing(ChannelOwner):
    """An asyncio client's grpc.aio channel; `async with` closes it."""

    _open = staticmethod(aio_channel)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()


class Client(CacheClientBase, _AsyncClosing):
    """One tenant's connection to one kvtierd, for asyncio: kvtier.Client's constructor
    arguments and methods, each method a coroutine. UNAVAILABLE is retried with backoff
    (asyncio.sleep), as the blocking client does. With kvtier._native, get_into, read_ranges
    and put run in the C++ client on a worker thread (asyncio.to_thread), the GIL released, so
    the event loop goes on while bytes move."""

    GET_PIECE_KEYS = 16384  # as kvtier.Client.GET_PIECE_KEYS

    def __init__(self, address: str, tenant: str, *, token: Optional[str] = None,
                 timeout: float = 30.0, attempts: int = 4, chunk_bytes: int = 1 << 20,
                 tls_ca: Pem = None, tls_cert: Pem = None, tls_key: Pem = None,
                 tls_server_name: Optional[str] = None, max_message_bytes: int = 64 << 20,
                 use_native: bool = True, ucx_connections: int = 8):
        super().__init__(address, tenant, token=token, timeout=timeout, attempts=attempts,
                         chunk_bytes=chunk_bytes, tls_ca=tls_ca, tls_cert=tls_cert,
                         tls_key=tls_key, tls_server_name=tls_server_name,
                         max_message_bytes=max_message_bytes, use_native=use_native,
                         ucx_connections=ucx_connections)

    async def close(self) -> None:
        """Closes the channel (calls in flight are cancelled) and the native client."""
        if self._native is not None:
            await asyncio.to_thread(self._native.close)
        await super().close()

    async def _call(self, fn):
        backoff = 0.05
        for attempt in range(self._attempts):
            try:
                return await fn()
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == self._attempts:
                    raise KvtierError.of(e) from None
                await asyncio.sleep(backoff)
                backoff *= 2
        raise AssertionError("unreachable")

    async def put(self, blocks: Iterable[Block], *, durable: bool = False,
                  layout: Optional[KvLayout] = None) -> PutResult:
        """Stores (key, parent, payload) blocks in one stream (see kvtier.Client.put)."""
        checked = _check_blocks(blocks)
        if not checked:
            return PutResult()
        if self._native is not None:
            return PutResult(*await asyncio.to_thread(self._native.put, checked, durable, layout))

        async def run():
            return await self._stub.Put(
                _put_requests(self.tenant, checked, layout, durable, self._chunk),
                timeout=self._timeout, metadata=self._metadata)

        res = await self._call(run)
        return PutResult(res.stored, res.present)

    async def get(self, keys: Sequence[bytes]) -> List[Optional[bytes]]:
        """One entry per key: the block's bytes, or None (see kvtier.Client.get)."""
        keys = check_keys(keys)
        out: List[Optional[bytes]] = []
        for begin in range(0, len(keys), self.GET_PIECE_KEYS):
            piece = keys[begin:begin + self.GET_PIECE_KEYS]
            try:
                out.extend(await self._get(piece, client_verifies=True))
            except _ArrivedDamaged:
                out.extend(await self._get(piece, client_verifies=False))
        return out

    async def _get(self, keys: List[bytes], client_verifies: bool) -> List[Optional[bytes]]:
        req = cache_pb2.GetRequest(tenant=self.tenant, client_verifies=client_verifies,
                                   **_keys_field(keys))

        async def run():
            answers = _GetAnswers()
            async for msg in self._stub.Get(req, timeout=self._timeout, metadata=self._metadata):
                answers.add(msg)
            return answers

        return (await self._call(run)).blocks(keys)

    async def get_into(self, keys: Sequence[bytes],
                       buffers: Sequence[Any]) -> List[Optional[int]]:
        """Reads block keys[i] into buffers[i]; per key its size or None (see
        kvtier.Client.get_into)."""
        keys = _dataplane.check_buffers(keys, buffers)
        if self._native is not None:
            return await asyncio.to_thread(self._native.get_into, keys, buffers)
        return _dataplane.copy_blocks(keys, await self.get(keys), buffers)

    async def read_ranges(self, reads: Sequence[_dataplane.RangeRead]) -> bool:
        """(key, offset, buffer) reads of parts of blocks; whether UCX served them (see
        kvtier.Client.read_ranges)."""
        reads = _dataplane.check_reads(reads)
        if self._native is not None:
            return await asyncio.to_thread(self._native.read_ranges, reads)
        keys = _dataplane.distinct([r[0] for r in reads])
        _dataplane.copy_ranges(reads, keys, await self.get(keys))
        return False

    async def lease(self, keys: Sequence[bytes], ttl_ms: int = 0) -> Lease:
        """Pins blocks in the daemon's host RAM (see kvtier.Client.lease)."""
        req = _lease_request(self.tenant, keys, ttl_ms)
        sent = time.monotonic()
        return _lease_of(await self._call(lambda: self._stub.Lease(
            req, timeout=self._timeout, metadata=self._metadata)), sent)

    async def release(self, lease: Lease, bytes_read: int = 0) -> bool:
        """Ends a lease; whether it was still held (see kvtier.Client.release)."""
        req = cache_pb2.ReleaseRequest(tenant=self.tenant, lease_id=lease.id,
                                       bytes_read=bytes_read)
        try:
            return (await self._call(lambda: self._stub.Release(
                req, timeout=self._timeout, metadata=self._metadata))).lease_active
        except KvtierError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:  # the daemon no longer knows the lease
                return False
            raise

    async def lookup(self, keys: Sequence[bytes]) -> Lookup:
        """How many leading blocks of the chain `keys` are cached, and in which tiers."""
        req = cache_pb2.LookupRequest(tenant=self.tenant, **_keys_field(keys))
        return _lookup_of(await self._call(lambda: self._stub.Lookup(
            req, timeout=self._timeout, metadata=self._metadata)))

    async def delete(self, keys: Sequence[bytes]) -> int:
        """Removes blocks; returns how many were present."""
        req = cache_pb2.DeleteRequest(tenant=self.tenant, **_keys_field(keys))
        return (await self._call(lambda: self._stub.Delete(
            req, timeout=self._timeout, metadata=self._metadata))).deleted

    async def stats(self) -> Dict[str, object]:
        """The daemon's counters and tiers (see kvtier.Client.stats)."""
        return _stats_of(await self._call(lambda: self._stub.Stats(
            cache_pb2.StatsRequest(), timeout=self._timeout, metadata=self._metadata)))


class RouterClient(_AsyncClosing):
    """kvtier.RouterClient for asyncio. route_locally stays a plain method: it decides in this
    process, without I/O."""

    def __init__(self, address: str, *, token: Optional[str] = None, timeout: float = 5.0,
                 tls_ca: Pem = None, tls_cert: Pem = None, tls_key: Pem = None,
                 tls_server_name: Optional[str] = None, max_message_bytes: int = 64 << 20):
        super().__init__(address, token, tls_ca, tls_cert, tls_key, tls_server_name,
                         max_message_bytes)
        self._stub = router_pb2_grpc.RouteServiceStub(self._channel)
        self._timeout = timeout
        self._routes = _router._LocalRoutes()

    async def _call(self, fn, request):
        try:
            return await fn(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise KvtierError.of(e) from None

    async def route(self, tenant: str, *, tokens: Optional[Sequence[int]] = None,
                    keys: Optional[Sequence[bytes]] = None, model: str = "",
                    block_tokens: int = 16, layout_fingerprint: int = 0, adapter: str = "",
                    cache_salt: str = "") -> Route:
        """The nodes for a prompt, best first (see kvtier.RouterClient.route)."""
        req = _router._route_request(tenant, tokens, keys, model, block_tokens,
                                     layout_fingerprint, adapter, cache_salt)
        return _router._route_of(await self._call(self._stub.Route, req))

    async def members(self) -> List[Member]:
        """The router's membership: every kvtierd with its weight, health, decisions and load."""
        return _router._members_of(await self._call(self._stub.Members,
                                                    router_pb2.MembersRequest()))

    async def refresh_members(self) -> None:
        """Fetches the membership for route_locally; placements on remaining nodes are kept."""
        self._routes.refresh(await self._call(self._stub.Members, router_pb2.MembersRequest()))

    def route_locally(self, tenant: str, *, tokens: Optional[Sequence[int]] = None,
                      keys: Optional[Sequence[bytes]] = None, model: str = "",
                      block_tokens: int = 16, layout_fingerprint: int = 0,
                      adapter: str = "") -> Route:
        """Like route(), decided here with the membership of the last refresh_members()."""
        return self._routes.route(tenant, tokens, keys, model, block_tokens, layout_fingerprint,
                                  adapter)

    async def report(self, node: str, prefilled_blocks: int) -> None:
        """Tells the router what a routed request cost `node` (its load signal)."""
        await self._call(self._stub.Report,
                         router_pb2.ReportRequest(node=node, prefilled_blocks=prefilled_blocks))


class WorkerClient(_AsyncClosing):
    """kvtier.WorkerClient for asyncio."""

    def __init__(self, address: str, *, token: Optional[str] = None, timeout: float = 60.0,
                 tls_ca: Pem = None, tls_cert: Pem = None, tls_key: Pem = None,
                 tls_server_name: Optional[str] = None, max_message_bytes: int = 256 << 20):
        super().__init__(address, token, tls_ca, tls_cert, tls_key, tls_server_name,
                         max_message_bytes)
        self._stub = attention_pb2_grpc.AttentionServiceStub(self._channel)
        self._timeout = timeout

    async def decode(self, tenant: str, layout: KvLayout, sequences: Sequence[SequenceQuery], *,
                     mode: Optional[str] = None, profile: Optional[Mapping] = None,
                     scale: float = 0.0, model: str = "", adapter: str = "") -> DecodeResult:
        """One decode step (see kvtier.WorkerClient.decode)."""
        req = _worker._decode_request(tenant, layout, sequences, mode, profile, scale, model,
                                      adapter)
        try:
            res = await self._stub.Decode(req, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise KvtierError.of(e) from None
        return _worker._decode_result(res)
