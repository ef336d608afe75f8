"""Client of kvtierd (kvtier.v1.CacheService) for Python inference frontends."""
from __future__ import annotations

import dataclasses
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import grpc
import xxhash

from kvtier.keys import KvLayout
from kvtier.v1 import cache_pb2, cache_pb2_grpc, types_pb2

_TIERS = {types_pb2.TIER_HBM: "hbm", types_pb2.TIER_HOST: "host", types_pb2.TIER_NVME: "nvme"}


class KvtierError(Exception):
    """A call failed; `code` is the grpc.StatusCode."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code


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


Block = Tuple[bytes, Optional[bytes], bytes]  # (key, parent key or None, payload)


def _checksum(data: bytes) -> int:
    return xxhash.xxh3_64_intdigest(data)


def _keys(keys: Sequence[bytes]) -> dict:
    """Request fields naming `keys`: packed when every key is 16 bytes (cheaper), else as a list
    (the daemon then says which key is malformed)."""
    keys = list(keys)
    if all(len(k) == 16 for k in keys):
        return {"packed_keys": b"".join(keys)}
    return {"keys": keys}


class Client:
    """One tenant's connection to one kvtierd.

    Every call has a deadline (`timeout` seconds) and is retried with exponential backoff when
    the daemon is UNAVAILABLE (all operations are idempotent). Use as a context manager, or call
    close(). Keys are 16-byte `bytes` (see kvtier.ChainHasher).
    """

    def __init__(self, address: str, tenant: str, *, token: Optional[str] = None,
                 timeout: float = 30.0, attempts: int = 4, chunk_bytes: int = 1 << 20,
                 tls_ca: Optional[bytes] = None, tls_cert: Optional[bytes] = None,
                 tls_key: Optional[bytes] = None, max_message_bytes: int = 64 << 20):
        if not address:
            raise ValueError("address: must be set")
        if not tenant:
            raise ValueError("tenant: must be set")
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if tls_ca is not None:
            creds = grpc.ssl_channel_credentials(tls_ca, tls_key, tls_cert)
            self._channel = grpc.secure_channel(address, creds, options)
        else:
            self._channel = grpc.insecure_channel(address, options)
        self._stub = cache_pb2_grpc.CacheServiceStub(self._channel)
        self.tenant = tenant
        self._metadata = [("authorization", f"Bearer {token}")] if token else []
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._chunk = chunk_bytes

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, fn):
        backoff = 0.05
        for attempt in range(self._attempts):
            try:
                return fn()
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == self._attempts:
                    raise KvtierError(e.code(), e.details() or "") from None
                time.sleep(backoff)
                backoff *= 2
        raise AssertionError("unreachable")

    def put(self, blocks: Iterable[Block], *, durable: bool = False,
            layout: Optional[KvLayout] = None) -> PutResult:
        """Stores blocks in one stream. A block is visible only once all of it arrived."""
        blocks = list(blocks)

        def requests():
            first = True
            for key, parent, data in blocks:
                data = bytes(data)
                for off in range(0, max(len(data), 1), self._chunk):
                    req = cache_pb2.PutRequest(data=data[off:off + self._chunk])
                    if first:
                        req.tenant = self.tenant
                        if layout is not None:
                            req.layout.CopyFrom(_layout_proto(layout))
                        first = False
                    if off == 0:
                        req.header.key = key
                        if parent:
                            req.header.parent = parent
                        req.header.size = len(data)
                        req.header.checksum = _checksum(data)
                        req.header.durable = durable
                    yield req

        res = self._call(lambda: self._stub.Put(requests(), timeout=self._timeout,
                                                metadata=self._metadata))
        return PutResult(res.stored, res.present)

    # A daemon answers at most limits.max_keys_per_get keys in one Get (65,536 by default):
    # longer Gets are asked in pieces of this many, one after another.
    GET_PIECE_KEYS = 16384

    def get(self, keys: Sequence[bytes]) -> List[Optional[bytes]]:
        """One entry per key: the block's bytes, or None when it is not cached. Every payload
        is checked against the daemon's checksum. A block that arrives damaged is asked for
        again with the daemon checking it, which drops and reports it (DATA_LOSS)."""
        if len(keys) > self.GET_PIECE_KEYS:
            out: List[Optional[bytes]] = []
            for begin in range(0, len(keys), self.GET_PIECE_KEYS):
                out.extend(self.get(keys[begin:begin + self.GET_PIECE_KEYS]))
            return out
        try:
            return self._get(keys, client_verifies=True)
        except _ArrivedDamaged:
            return self._get(keys, client_verifies=False)

    def _get(self, keys: Sequence[bytes], client_verifies: bool) -> List[Optional[bytes]]:
        req = cache_pb2.GetRequest(tenant=self.tenant, client_verifies=client_verifies,
                                   **_keys(keys))

        def run():
            # Per key, the data pieces of its block (None: not cached). A block that came in
            # one message is returned as the bytes protobuf made for it, without a copy.
            out: List[Optional[List[bytes]]] = []
            sums: List[int] = []
            for msg in self._stub.Get(req, timeout=self._timeout, metadata=self._metadata):
                if msg.HasField("header"):
                    out.append([] if msg.found else None)
                    if msg.found:
                        sums.append(msg.header.checksum)
                if out and out[-1] is not None and msg.data:
                    out[-1].append(msg.data)
            return out, sums

        out, sums = self._call(run)
        if len(out) != len(keys):
            raise KvtierError(grpc.StatusCode.INTERNAL, f"{len(out)} answers for {len(keys)} keys")
        result: List[Optional[bytes]] = []
        it = iter(sums)
        for key, pieces in zip(keys, out):
            if pieces is None:
                result.append(None)
                continue
            block = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if _checksum(block) != next(it):
                raise _ArrivedDamaged(grpc.StatusCode.DATA_LOSS,
                                      f"block {key.hex()} arrived corrupted")
            result.append(block)
        return result

    def lookup(self, keys: Sequence[bytes]) -> Lookup:
        """How many leading blocks of the chain `keys` are cached, and in which tiers."""
        req = cache_pb2.LookupRequest(tenant=self.tenant, **_keys(keys))
        res = self._call(lambda: self._stub.Lookup(req, timeout=self._timeout,
                                                   metadata=self._metadata))
        return Lookup(res.matched, [_TIERS.get(t, "unknown") for t in res.tiers])

    def delete(self, keys: Sequence[bytes]) -> int:
        """Removes blocks; returns how many were present."""
        req = cache_pb2.DeleteRequest(tenant=self.tenant, **_keys(keys))
        return self._call(lambda: self._stub.Delete(req, timeout=self._timeout,
                                                    metadata=self._metadata)).deleted

    def stats(self) -> Dict[str, object]:
        res = self._call(lambda: self._stub.Stats(cache_pb2.StatsRequest(), timeout=self._timeout,
                                                  metadata=self._metadata))
        out: Dict[str, object] = {f.name: getattr(res, f.name)
                                  for f in res.DESCRIPTOR.fields if f.name != "tiers"}
        out["tiers"] = {_TIERS.get(t.tier, "unknown"): {
            "present": t.present, "capacity_bytes": t.capacity_bytes,
            "used_bytes": t.used_bytes, "blocks": t.blocks, "hits": t.hits} for t in res.tiers}
        return out


def _layout_proto(layout: KvLayout) -> types_pb2.KvLayout:
    return types_pb2.KvLayout(
        kind={"gqa": types_pb2.LAYOUT_KIND_GQA, "mla": types_pb2.LAYOUT_KIND_MLA}[layout.kind],
        dtype={"fp16": types_pb2.DTYPE_FP16, "bf16": types_pb2.DTYPE_BF16,
               "fp8-e4m3": types_pb2.DTYPE_FP8_E4M3}[layout.dtype],
        layers=layout.layers, kv_heads=layout.kv_heads, head_dim=layout.head_dim,
        block_tokens=layout.block_tokens, latent_rank=layout.latent_rank,
        rope_dim=layout.rope_dim)
