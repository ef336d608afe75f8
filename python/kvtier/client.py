"""Client of kvtierd (kvtier.v1.CacheService) for Python inference frontends.

This is the blocking client; kvtier.aio.Client has the same methods for asyncio. Both build
their requests and read the answers with the helpers here. Reads into caller memory
(get_into, read_ranges) and puts go through kvtier._native, the C++ client, where the package
has it (kvtier/_dataplane.py): over the daemon's UCX data plane when it offers one, else gRPC.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import grpc
import xxhash

from kvtier import _dataplane
from kvtier._grpc import ChannelOwner, Closing, KvtierError, Pem
from kvtier.keys import Block, KvLayout, check_key, check_keys
from kvtier.v1 import cache_pb2, cache_pb2_grpc, types_pb2

__all__ = ["Client", "KvtierError", "PutResult", "Lookup", "Block", "Lease", "LeasedBlock"]

_TIERS = {types_pb2.TIER_HBM: "hbm", types_pb2.TIER_HOST: "host", types_pb2.TIER_NVME: "nvme"}


class _ArrivedDamaged(KvtierError):
    """A block failed this client's own check (get asks again with the daemon checking)."""


@dataclasses.dataclass
class PutResult:
    stored: int = 0   # blocks newly stored
    present: int = 0  # blocks that were already there


@dataclasses.dataclass
class Lookup:
    matched: int          # leading blocks of the chain that are cached
    tiers: List[str]      # "hbm", "host" or "nvme" for each


def _checksum(data) -> int:
    return xxhash.xxh3_64_intdigest(data)


def _keys_field(keys: Sequence[bytes]) -> dict:
    """The request field naming `keys` (checked: TypeError or ValueError before any call)."""
    return {"packed_keys": b"".join(check_keys(keys))}


def _payload(data: Any, what: str) -> memoryview:
    """`data` as a flat byte view, without a copy where it is contiguous."""
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"{what}: bytes-like (bytes, bytearray, memoryview, an array), not "
                        f"{type(data).__name__}") from None
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    try:
        return view.cast("B")  # C-contiguous, other item formats or dimensions
    except TypeError:
        return memoryview(view.tobytes())  # strided, or a format cast refuses


def _check_blocks(blocks: Iterable[Block]) -> List[Tuple[bytes, Optional[bytes], memoryview]]:
    if isinstance(blocks, (str, bytes, bytearray, memoryview)):
        raise TypeError("blocks: (key, parent, payload) triples, not one "
                        f"{type(blocks).__name__}")
    out = []
    for i, block in enumerate(blocks):
        if not isinstance(block, (tuple, list)) or len(block) != 3:
            raise TypeError(f"blocks[{i}]: a (key, parent, payload) triple, not "
                            f"{type(block).__name__}")
        key, parent, data = block
        out.append((check_key(key, f"blocks[{i}] key"),
                    None if parent is None else check_key(parent, f"blocks[{i}] parent"),
                    _payload(data, f"blocks[{i}] payload")))
    return out


def _put_requests(tenant: str, blocks, layout: Optional[KvLayout], durable: bool,
                  chunk: int) -> Iterator[cache_pb2.PutRequest]:
    """The Put stream of checked blocks: each block's header with its first chunk."""
    first = True
    for key, parent, view in blocks:
        size = len(view)
        for off in range(0, max(size, 1), chunk):
            req = cache_pb2.PutRequest(data=bytes(view[off:off + chunk]))
            if first:
                req.tenant = tenant
                if layout is not None:
                    req.layout.CopyFrom(_layout_proto(layout))
                first = False
            if off == 0:
                req.header.key = key
                if parent is not None:
                    req.header.parent = parent
                req.header.size = size
                req.header.checksum = _checksum(view)
                req.header.durable = durable
            yield req


class _GetAnswers:
    """Collects a Get stream: per key the data pieces of its block (None: not cached)."""

    def __init__(self):
        self.pieces: List[Optional[List[bytes]]] = []
        self.sums: List[int] = []

    def add(self, msg: cache_pb2.GetResponse) -> None:
        if msg.HasField("header"):
            self.pieces.append([] if msg.found else None)
            if msg.found:
                self.sums.append(msg.header.checksum)
        if self.pieces and self.pieces[-1] is not None and msg.data:
            self.pieces[-1].append(msg.data)

    def blocks(self, keys: Sequence[bytes]) -> List[Optional[bytes]]:
        """One entry per key, each checked against its checksum. A block that came in one
        message is returned as the bytes protobuf made for it, without a copy."""
        if len(self.pieces) != len(keys):
            raise KvtierError(grpc.StatusCode.INTERNAL,
                              f"{len(self.pieces)} answers for {len(keys)} keys")
        result: List[Optional[bytes]] = []
        it = iter(self.sums)
        for key, pieces in zip(keys, self.pieces):
            if pieces is None:
                result.append(None)
                continue
            block = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if _checksum(block) != next(it):
                raise _ArrivedDamaged(grpc.StatusCode.DATA_LOSS,
                                      f"block {key.hex()} arrived corrupted")
            result.append(block)
        return result


@dataclasses.dataclass
class LeasedBlock:
    key: bytes
    tier: str       # "host": in the daemon's RAM, where UCX reads it
    size: int       # bytes
    checksum: int   # XXH3-64 of its bytes


@dataclasses.dataclass
class Lease:
    id: int
    expires: float  # time.monotonic() when the lease ends (at the latest)
    blocks: List[LeasedBlock]


def _lease_request(tenant: str, keys: Sequence[bytes], ttl_ms: int) -> cache_pb2.LeaseRequest:
    if not isinstance(ttl_ms, int) or ttl_ms < 0:
        raise ValueError(f"ttl_ms: an int >= 0, not {ttl_ms!r}")
    return cache_pb2.LeaseRequest(tenant=tenant, ttl_ms=ttl_ms, **_keys_field(keys))


def _lease_of(res: cache_pb2.LeaseResponse, sent: float) -> Lease:
    return Lease(res.lease_id, sent + res.expires_in_ms / 1000.0,
                 [LeasedBlock(b.key, _TIERS.get(b.tier, "unknown"), b.size, b.checksum)
                  for b in res.blocks])


def _lookup_of(res: cache_pb2.LookupResponse) -> Lookup:
    return Lookup(res.matched, [_TIERS.get(t, "unknown") for t in res.tiers])


def _stats_of(res: cache_pb2.StatsResponse) -> Dict[str, object]:
    out: Dict[str, object] = {f.name: getattr(res, f.name)
                              for f in res.DESCRIPTOR.fields if f.name != "tiers"}
    out["tiers"] = {_TIERS.get(t.tier, "unknown"): {
        "present": t.present, "capacity_bytes": t.capacity_bytes,
        "used_bytes": t.used_bytes, "blocks": t.blocks, "hits": t.hits} for t in res.tiers}
    return out


def _keep_options(client, tenant: str, timeout: float, attempts: int, chunk_bytes: int) -> None:
    """Checks a cache client's own options (Client's, kvtier.aio.Client's) and keeps them."""
    if not tenant or not isinstance(tenant, str):
        raise ValueError("tenant: must be set (a str)")
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes: must be > 0")
    client.tenant = tenant
    client._timeout = timeout
    client._attempts = max(1, attempts)
    client._chunk = chunk_bytes


def _open_native(address: str, tenant: str, token, timeout: float, attempts: int,
                 chunk_bytes: int, tls_ca, tls_cert, tls_key, tls_server_name,
                 max_message_bytes: int, use_native: bool, ucx_connections: int):
    """The client's kvtier._native client, or None (not wanted, or not in this package)."""
    if not use_native or _dataplane._native is None:
        return None
    if ucx_connections < 1:
        raise ValueError("ucx_connections: must be >= 1")
    return _dataplane.Native(address, tenant, token=token, timeout=timeout, attempts=attempts,
                             chunk_bytes=chunk_bytes, tls_ca=tls_ca, tls_cert=tls_cert,
                             tls_key=tls_key, tls_server_name=tls_server_name,
                             max_message_bytes=max_message_bytes,
                             ucx_connections=ucx_connections)


_NO_UCX_STATS = {"ucx_bytes": 0, "grpc_bytes": 0, "session_gets": 0, "session_leases": 0,
                 "leases": 0, "lease_retries": 0, "ucx_fallbacks": 0, "ucx_connects": 0,
                 "verified_reads": 0}


class CacheClientBase(ChannelOwner):
    """What kvtier.Client and kvtier.aio.Client share: their options, their stub and their
    kvtier._native client (the channel is the subclass's: blocking or grpc.aio)."""

    def __init__(self, address: str, tenant: str, *, token, timeout, attempts, chunk_bytes,
                 tls_ca, tls_cert, tls_key, tls_server_name, max_message_bytes, use_native,
                 ucx_connections):
        _keep_options(self, tenant, timeout, attempts, chunk_bytes)
        super().__init__(address, token, tls_ca, tls_cert, tls_key, tls_server_name,
                         max_message_bytes)
        self._stub = cache_pb2_grpc.CacheServiceStub(self._channel)
        self._native = _open_native(address, tenant, token, timeout, self._attempts, chunk_bytes,
                                    tls_ca, tls_cert, tls_key, tls_server_name,
                                    max_message_bytes, use_native, ucx_connections)

    @property
    def native(self) -> bool:
        """Whether get_into, read_ranges and put go through kvtier._native (UCX where the
        daemon offers it)."""
        return self._native is not None

    def register_buffer(self, buffer: Any) -> None:
        """Registers memory that reads will land in (a buffer reused for many get_into calls)
        once, instead of on every UCX read; kept alive until the client is gone. A no-op
        without kvtier._native."""
        if self._native is not None:
            self._native.register_buffer(buffer)

    def transfer_stats(self) -> Dict[str, int]:
        """What kvtier._native moved, and how: ucx_bytes, grpc_bytes, leases, ucx_fallbacks,
        ucx_connects, ... (monotonic; zeros without it)."""
        return self._native.transfer_stats() if self._native is not None else dict(_NO_UCX_STATS)


class Client(CacheClientBase, Closing):
    """One tenant's connection to one kvtierd.

    Every call has a deadline (`timeout` seconds) and is retried with exponential backoff when
    the daemon is UNAVAILABLE (all operations are idempotent). Use as a context manager, or call
    close(). Keys are 16-byte `bytes` (see kvtier.ChainHasher); anything else is a TypeError
    (a str) or ValueError (another length) before any call. A failed call raises KvtierError,
    a grpc.RpcError with code() and details().

    `token`: the tenant's bearer token, for daemons that check them. TLS is on with `tls_ca`,
    the CA that signed the daemon's certificate; `tls_cert` and `tls_key` are a client
    certificate for mutual TLS. Each is a file path, as the CLI's --tls-* flags take, or the PEM
    bytes. `tls_server_name`: the name checked in the daemon's certificate, when not the
    address's host.

    Data plane: where the package has kvtier._native (`client.native`), get_into, read_ranges
    and put run in the C++ client without the GIL, and reads go over the daemon's UCX data plane
    (up to `ucx_connections` at once) when it offers one on this host, else over gRPC, chosen
    per call, with the same results and errors. `use_native=False`: Python gRPC alone.
    """

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

    def close(self) -> None:
        """Closes the channel and the native client's connections; calls after it fail."""
        if self._native is not None:
            self._native.close()
        super().close()

    def _call(self, fn):
        backoff = 0.05
        for attempt in range(self._attempts):
            try:
                return fn()
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == self._attempts:
                    raise KvtierError.of(e) from None
                time.sleep(backoff)
                backoff *= 2
        raise AssertionError("unreachable")

    def put(self, blocks: Iterable[Block], *, durable: bool = False,
            layout: Optional[KvLayout] = None) -> PutResult:
        """Stores (key, parent, payload) blocks in one stream; kvtier.new_blocks builds them
        for a prompt. A payload is any bytes-like object (bytes, bytearray, memoryview, a numpy
        array). A block is visible only once all of it arrived. `layout`: the daemon checks
        each payload's size against it. `durable`: acknowledged only once on the NVMe tier."""
        checked = _check_blocks(blocks)
        if not checked:
            return PutResult()
        if self._native is not None:
            return PutResult(*self._native.put(checked, durable, layout))
        res = self._call(lambda: self._stub.Put(
            _put_requests(self.tenant, checked, layout, durable, self._chunk),
            timeout=self._timeout, metadata=self._metadata))
        return PutResult(res.stored, res.present)

    # A daemon answers at most limits.max_keys_per_get keys in one Get (65,536 by default):
    # longer Gets are asked in pieces of this many, one after another.
    GET_PIECE_KEYS = 16384

    def get(self, keys: Sequence[bytes]) -> List[Optional[bytes]]:
        """One entry per key: the block's bytes, or None when it is not cached. Every payload
        is checked against the daemon's checksum. A block that arrives damaged is asked for
        again with the daemon checking it, which drops and reports it (DATA_LOSS)."""
        keys = check_keys(keys)
        out: List[Optional[bytes]] = []
        for begin in range(0, len(keys), self.GET_PIECE_KEYS):
            piece = keys[begin:begin + self.GET_PIECE_KEYS]
            try:
                out.extend(self._get(piece, client_verifies=True))
            except _ArrivedDamaged:
                out.extend(self._get(piece, client_verifies=False))
        return out

    def _get(self, keys: List[bytes], client_verifies: bool) -> List[Optional[bytes]]:
        req = cache_pb2.GetRequest(tenant=self.tenant, client_verifies=client_verifies,
                                   **_keys_field(keys))

        def run():
            answers = _GetAnswers()
            for msg in self._stub.Get(req, timeout=self._timeout, metadata=self._metadata):
                answers.add(msg)
            return answers

        return self._call(run).blocks(keys)

    def get_into(self, keys: Sequence[bytes], buffers: Sequence[Any]) -> List[Optional[int]]:
        """Reads block keys[i] into the start of buffers[i], each verified against its
        checksum: one entry per key, the block's size, or None when it is not cached. A buffer
        is writable memory: a bytearray, a memoryview, a numpy array, or (with kvtier._native)
        a host tensor with __dlpack__ (torch, pinned or not). OUT_OF_RANGE when a block is
        larger than its buffer. No copy through Python objects: with kvtier._native the bytes
        land in the buffers straight from UCX or gRPC, and the GIL is released meanwhile."""
        keys = _dataplane.check_buffers(keys, buffers)
        if self._native is not None:
            return self._native.get_into(keys, buffers)
        return _dataplane.copy_blocks(keys, self.get(keys), buffers)

    def read_ranges(self, reads: Sequence[_dataplane.RangeRead]) -> bool:
        """Reads parts of blocks (for example one layer's or some heads' slices,
        KvLayout.head_slice): each (key, offset, buffer) read fills `buffer` from byte `offset`
        of block `key`. Over UCX (only those bytes move) where kvtier._native and the daemon's
        data plane serve it, else by fetching the whole blocks over gRPC. NOT_FOUND names the
        first block not cached; OUT_OF_RANGE for a range past its block's end. Returns whether
        UCX served the reads."""
        reads = _dataplane.check_reads(reads)
        if self._native is not None:
            return self._native.read_ranges(reads)
        keys = _dataplane.distinct([r[0] for r in reads])
        _dataplane.copy_ranges(reads, keys, self.get(keys))
        return False

    def lease(self, keys: Sequence[bytes], ttl_ms: int = 0) -> Lease:
        """Pins blocks in the daemon's host RAM (NVMe blocks are promoted) until release() or
        the lease's end (`ttl_ms`, 0: the daemon's default): reads of them meanwhile find them
        in RAM. NOT_FOUND when a block is not cached."""
        req = _lease_request(self.tenant, keys, ttl_ms)
        sent = time.monotonic()
        return _lease_of(self._call(lambda: self._stub.Lease(
            req, timeout=self._timeout, metadata=self._metadata)), sent)

    def release(self, lease: Lease, bytes_read: int = 0) -> bool:
        """Ends a lease; returns whether it was still held (False: it had ended or was
        released). `bytes_read` is counted in the daemon's metrics."""
        req = cache_pb2.ReleaseRequest(tenant=self.tenant, lease_id=lease.id,
                                       bytes_read=bytes_read)
        try:
            return self._call(lambda: self._stub.Release(
                req, timeout=self._timeout, metadata=self._metadata)).lease_active
        except KvtierError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:  # the daemon no longer knows the lease
                return False
            raise

    def lookup(self, keys: Sequence[bytes]) -> Lookup:
        """How many leading blocks of the chain `keys` are cached, and in which tiers."""
        req = cache_pb2.LookupRequest(tenant=self.tenant, **_keys_field(keys))
        return _lookup_of(self._call(lambda: self._stub.Lookup(
            req, timeout=self._timeout, metadata=self._metadata)))

    def delete(self, keys: Sequence[bytes]) -> int:
        """Removes blocks; returns how many were present."""
        req = cache_pb2.DeleteRequest(tenant=self.tenant, **_keys_field(keys))
        return self._call(lambda: self._stub.Delete(req, timeout=self._timeout,
                                                    metadata=self._metadata)).deleted

    def stats(self) -> Dict[str, object]:
        """The daemon's counters (StatsResponse's fields by name) and, under "tiers", each
        tier's present, capacity_bytes, used_bytes, blocks and hits."""
        return _stats_of(self._call(lambda: self._stub.Stats(
            cache_pb2.StatsRequest(), timeout=self._timeout, metadata=self._metadata)))


def _layout_proto(layout: KvLayout) -> types_pb2.KvLayout:
    if not isinstance(layout, KvLayout):
        raise TypeError(f"layout: a kvtier.KvLayout, not {type(layout).__name__}")
    return types_pb2.KvLayout(
        kind={"gqa": types_pb2.LAYOUT_KIND_GQA, "mla": types_pb2.LAYOUT_KIND_MLA}[layout.kind],
        dtype={"fp16": types_pb2.DTYPE_FP16, "bf16": types_pb2.DTYPE_BF16,
               "fp8-e4m3": types_pb2.DTYPE_FP8_E4M3}[layout.dtype],
        layers=layout.layers, kv_heads=layout.kv_heads, head_dim=layout.head_dim,
        block_tokens=layout.block_tokens, latent_rank=layout.latent_rank,
        rope_dim=layout.rope_dim)
