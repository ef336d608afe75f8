"""Client of kvtierd (kvtier.v1.CacheService) for Python inference frontends.

This is the blocking client; kvtier.aio.Client has the same methods for asyncio. Both build
their requests and read the answers with the helpers here.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import grpc
import xxhash

from kvtier._grpc import Closing, KvtierError, Pem
from kvtier.keys import Block, KvLayout, check_key, check_keys
from kvtier.v1 import cache_pb2, cache_pb2_grpc, types_pb2

__all__ = ["Client", "KvtierError", "PutResult", "Lookup", "Block"]

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


class Client(Closing):
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
    """

    def __init__(self, address: str, tenant: str, *, token: Optional[str] = None,
                 timeout: float = 30.0, attempts: int = 4, chunk_bytes: int = 1 << 20,
                 tls_ca: Pem = None, tls_cert: Pem = None, tls_key: Pem = None,
                 tls_server_name: Optional[str] = None, max_message_bytes: int = 64 << 20):
        _keep_options(self, tenant, timeout, attempts, chunk_bytes)
        super().__init__(address, token, tls_ca, tls_cert, tls_key, tls_server_name,
                         max_message_bytes)
        self._stub = cache_pb2_grpc.CacheServiceStub(self._channel)

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
