"""Reading blocks into caller memory: kvtier._native (the C++ client: UCX, then gRPC), or
without it the Python gRPC path, with the same results and errors. Shared by kvtier.Client and
kvtier.aio.Client."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import grpc

from kvtier._grpc import KvtierError, _read_pem
from kvtier.keys import _DTYPES, _KINDS, KvLayout, check_key, check_keys

try:
    from kvtier import _native
    NATIVE_IMPORT_ERROR: Optional[str] = None
except ImportError as e:  # a package built without it (native=off), or one that cannot load
    _native = None
    NATIVE_IMPORT_ERROR = str(e)

_CODES = {code.value[0]: code for code in grpc.StatusCode}

# A (key, offset, buffer) read of part of a block: len(buffer) bytes from `offset`.
RangeRead = Tuple[bytes, int, Any]


def _error(e: Exception) -> KvtierError:
    code, message = e.args
    return KvtierError(_CODES.get(code, grpc.StatusCode.UNKNOWN), message)


def writable(buffer: Any, what: str) -> memoryview:
    """`buffer` as a flat writable byte view (the gRPC path's destination). TypeError for
    read-only memory or an object without the buffer protocol, ValueError for memory in
    pieces."""
    try:
        view = memoryview(buffer)
    except TypeError:
        raise TypeError(f"{what}: a writable buffer (bytearray, memoryview, numpy array), not "
                        f"{type(buffer).__name__} (DLPack tensors need kvtier._native)") from None
    if view.readonly:
        raise TypeError(f"{what}: read-only ({type(buffer).__name__}); reads need writable "
                        "memory")
    if not view.contiguous:
        raise ValueError(f"{what}: not one contiguous piece of memory")
    return view.cast("B") if (view.format != "B" or view.ndim != 1) else view


def check_buffers(keys: Sequence[bytes], buffers: Sequence[Any]) -> List[bytes]:
    keys = check_keys(keys)
    if isinstance(buffers, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"buffers: a sequence of buffers, not one {type(buffers).__name__}")
    if len(keys) != len(buffers):
        raise ValueError(f"keys and buffers: {len(keys)} keys, {len(buffers)} buffers")
    return keys


def check_reads(reads: Sequence[RangeRead]) -> List[Tuple[bytes, int, Any]]:
    if isinstance(reads, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"reads: (key, offset, buffer) tuples, not one {type(reads).__name__}")
    out = []
    for i, read in enumerate(reads):
        if not isinstance(read, (tuple, list)) or len(read) != 3:
            raise TypeError(f"reads[{i}]: a (key, offset, buffer) tuple")
        key, offset, buffer = read
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"reads[{i}]: offset must be an int >= 0, not {offset!r}")
        out.append((check_key(key, f"reads[{i}] key"), offset, buffer))
    return out


def copy_blocks(keys: List[bytes], blocks: List[Optional[bytes]],
                buffers: Sequence[Any]) -> List[Optional[int]]:
    """get_into over gRPC: the blocks Get returned, into their buffers (the errors of
    kvtier._native's)."""
    views = [writable(b, f"buffers[{i}]") for i, b in enumerate(buffers)]
    for key, block, view in zip(keys, blocks, views):
        if block is not None and len(block) > len(view):
            raise KvtierError(grpc.StatusCode.OUT_OF_RANGE,
                              f"get: block {key.hex()} is {len(block)} bytes, its buffer "
                              f"{len(view)}")
    sizes: List[Optional[int]] = []
    for block, view in zip(blocks, views):
        if block is not None:
            view[:len(block)] = block
        sizes.append(None if block is None else len(block))
    return sizes


def distinct(keys: List[bytes]) -> List[bytes]:
    return list(dict.fromkeys(keys))


def copy_ranges(reads: List[Tuple[bytes, int, Any]], keys: List[bytes],
                blocks: List[Optional[bytes]]) -> None:
    """read_ranges over gRPC: parts of the whole blocks Get returned (`blocks[i]` is
    `keys[i]`'s), into the reads' buffers."""
    by_key = dict(zip(keys, blocks))
    views = [writable(r[2], f"reads[{i}] buffer") for i, r in enumerate(reads)]
    for (key, offset, _), view in zip(reads, views):
        block = by_key[key]
        if block is None:
            raise KvtierError(grpc.StatusCode.NOT_FOUND, f"read: block {key.hex()} not found")
        if offset > len(block) or len(view) > len(block) - offset:
            raise KvtierError(grpc.StatusCode.OUT_OF_RANGE,
                              f"read: {len(view)} bytes at {offset} of block {key.hex()} "
                              f"({len(block)} bytes)")
    for (key, offset, _), view in zip(reads, views):
        view[:] = by_key[key][offset:offset + len(view)]


class Native:
    """A kvtier.Client's kvtier._native client: UCX reads of leased blocks into caller memory,
    puts from it, gRPC where UCX does not serve a call. Its methods release the GIL."""

    def __init__(self, address: str, tenant: str, *, token: Optional[str], timeout: float,
                 attempts: int, chunk_bytes: int, tls_ca, tls_cert, tls_key,
                 tls_server_name: Optional[str], max_message_bytes: int, ucx_connections: int):
        self._client = _native.Client(
            address, tenant, token=token or "", deadline_ms=max(1, int(timeout * 1000)),
            max_attempts=attempts, chunk_bytes=chunk_bytes,
            max_message_bytes=max_message_bytes,
            tls_ca_pem=_read_pem(tls_ca, "tls_ca") or b"",
            tls_cert_pem=_read_pem(tls_cert, "tls_cert") or b"",
            tls_key_pem=_read_pem(tls_key, "tls_key") or b"",
            tls_server_name=tls_server_name or "", ucx_connections=ucx_connections)

    def get_into(self, keys: List[bytes], buffers: Sequence[Any]) -> List[Optional[int]]:
        try:
            return self._client.get_into(keys, list(buffers))
        except _native.Error as e:
            raise _error(e) from None

    def read_ranges(self, reads: List[Tuple[bytes, int, Any]]) -> bool:
        try:
            return self._client.read_ranges([tuple(r) for r in reads])
        except _native.Error as e:
            raise _error(e) from None

    def put(self, blocks, durable: bool, layout: Optional[KvLayout]) -> Tuple[int, int]:
        """`blocks`: checked (key, parent, memoryview) triples."""
        fields = None
        if layout is not None:
            if not isinstance(layout, KvLayout):
                raise TypeError(f"layout: a kvtier.KvLayout, not {type(layout).__name__}")
            fields = (_KINDS[layout.kind], _DTYPES[layout.dtype][0], layout.layers, layout.kv_heads,
                      layout.head_dim, layout.block_tokens, layout.latent_rank, layout.rope_dim)
        try:
            return self._client.put([tuple(b) for b in blocks], durable, fields)
        except _native.Error as e:
            raise _error(e) from None

    def register_buffer(self, buffer: Any) -> None:
        self._client.register_buffer(buffer)

    def transfer_stats(self) -> Dict[str, int]:
        return self._client.transfer_stats()

    def close(self) -> None:
        self._client.close()
