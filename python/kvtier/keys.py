"""Block keys and layout fingerprints, exactly as docs/block-keys.md specifies.

Pure Python over Debian's python3-xxhash and hashlib; tests/data/block_keys.json holds the
vectors every implementation must reproduce.
"""
from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import Any, List, Optional, Sequence, Tuple

import xxhash

KEY_BYTES = 16
# What Client.put stores: (key, parent key or None for the first block of a chain, payload).
Block = Tuple[bytes, Optional[bytes], Any]

XXH3_SEED = 0x4B56544945523031  # b"KVTIER01" read as a big-endian integer
_ALGORITHMS = {"xxh3": 1, "sha256": 2}
_KINDS = {"gqa": 1, "mla": 2}
_DTYPES = {"fp16": (1, 2), "bf16": (2, 2), "fp8-e4m3": (3, 1)}


@dataclasses.dataclass(frozen=True)
class KvLayout:
    """Shape of one KV block. kind is "gqa" or "mla"; dtype "fp16", "bf16" or "fp8-e4m3"."""

    kind: str = "gqa"
    dtype: str = "bf16"
    layers: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    block_tokens: int = 16
    latent_rank: int = 0
    rope_dim: int = 0

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"layout.kind: {self.kind!r} is not 'gqa' or 'mla'")
        if self.dtype not in _DTYPES:
            raise ValueError(f"layout.dtype: {self.dtype!r} is not fp16, bf16 or fp8-e4m3")
        if self.layers <= 0:
            raise ValueError("layout.layers: must be > 0")
        if self.block_tokens <= 0:
            raise ValueError("layout.block_tokens: must be > 0")
        if self.kind == "gqa" and (self.kv_heads <= 0 or self.head_dim <= 0):
            raise ValueError("layout.kv_heads and layout.head_dim: must be > 0 for GQA")
        if self.kind == "mla" and self.latent_rank <= 0:
            raise ValueError("layout.latent_rank: must be > 0 for MLA")

    @property
    def bytes_per_block(self) -> int:
        """The size of one block of this layout, in bytes (what a daemon checks a Put against)."""
        size = _DTYPES[self.dtype][1]
        per = 2 * self.kv_heads * self.head_dim if self.kind == "gqa" else self.latent_rank + self.rope_dim
        return per * size * self.layers * self.block_tokens

    def fingerprint(self) -> int:
        """The layout's 64-bit fingerprint (docs/block-keys.md), part of the key namespace."""
        gqa = self.kind == "gqa"
        b = b"KVTIER/LAYOUT/1" + struct.pack("<BB", _KINDS[self.kind], _DTYPES[self.dtype][0])
        b += struct.pack("<IIIIII", self.layers, self.kv_heads if gqa else 0,
                         self.head_dim if gqa else 0, self.block_tokens,
                         0 if gqa else self.latent_rank, 0 if gqa else self.rope_dim)
        return xxhash.xxh3_64_intdigest(b)

    def head_slice(self, layer: int, part: str, kv_head: int) -> slice:
        """Byte range of one (layer, "k" or "v", kv_head) slice of a GQA block."""
        if self.kind != "gqa":
            raise ValueError("MLA blocks have no per-head slices")
        if not (0 <= layer < self.layers and 0 <= kv_head < self.kv_heads and part in ("k", "v")):
            raise IndexError("layer, part or kv_head out of range")
        n = self.block_tokens * self.head_dim * _DTYPES[self.dtype][1]
        start = ((layer * 2 + (part == "v")) * self.kv_heads + kv_head) * n
        return slice(start, start + n)


LLAMA3_8B = KvLayout("gqa", "bf16", layers=32, kv_heads=8, head_dim=128, block_tokens=16)
DEEPSEEK_V3 = KvLayout("mla", "bf16", layers=61, block_tokens=16, latent_rank=512, rope_dim=64)


@dataclasses.dataclass(frozen=True)
class KeyNamespace:
    """Everything besides the tokens that decides whether cached KV may be reused."""

    tenant_salt: bytes = b""
    model_id: str = ""
    layout_fingerprint: int = 0
    adapter_id: str = ""

    def encode(self, algorithm: str, block_tokens: int) -> bytes:
        """The namespace's bytes, hashed into a chain's root (docs/block-keys.md)."""
        def field(b: bytes) -> bytes:
            return struct.pack("<I", len(b)) + b
        return (b"KVTIER/NS/1" + struct.pack("<BI", _ALGORITHMS[algorithm], block_tokens)
                + field(self.tenant_salt) + field(self.model_id.encode())
                + struct.pack("<Q", self.layout_fingerprint) + field(self.adapter_id.encode()))


class ChainHasher:
    """Chained 128-bit prefix keys: K[-1] = H(namespace), K[i] = H(K[i-1] || tokens of block i).

    Keys are 16-byte `bytes`. Only full blocks get keys.
    """

    def __init__(self, namespace: KeyNamespace, block_tokens: int, algorithm: str = "xxh3"):
        if block_tokens <= 0:
            raise ValueError("block_tokens: must be > 0")
        if algorithm not in _ALGORITHMS:
            raise ValueError(f"hash: {algorithm!r} is not 'xxh3' or 'sha256'")
        self.block_tokens = block_tokens
        self.algorithm = algorithm
        self.root = self._hash(namespace.encode(algorithm, block_tokens))
        self._pack = struct.Struct("<%dI" % block_tokens).pack

    def _hash(self, data: bytes) -> bytes:
        if self.algorithm == "xxh3":
            return xxhash.xxh3_128_digest(data, seed=XXH3_SEED)
        return hashlib.sha256(data).digest()[:16]

    def next(self, parent: bytes, block: Sequence[int]) -> bytes:
        """The key of the block of tokens `block` that follows the block keyed `parent` (the
        first block of a prompt follows `root`)."""
        if len(block) != self.block_tokens:
            raise ValueError(f"a block holds {self.block_tokens} tokens, got {len(block)}")
        return self._hash(parent + self._pack(*block))

    def keys(self, tokens: Sequence[int]) -> List[bytes]:
        """One key per full block of `tokens` (a trailing partial block has none)."""
        out, key, b = [], self.root, self.block_tokens
        for i in range(len(tokens) // b):
            key = self._hash(key + self._pack(*tokens[i * b:(i + 1) * b]))
            out.append(key)
        return out

    def new_blocks(self, tokens: Sequence[int], payloads: Sequence[Any],
                   cached: int = 0) -> List[Block]:
        """The (key, parent, payload) triples of a prompt's blocks from `cached` on, for
        Client.put: `payloads[j]` is the KV bytes of block `cached + j`, one per full block
        after the cached ones. Same as new_blocks(self.keys(tokens), payloads, cached)."""
        return new_blocks(self.keys(tokens), payloads, cached)


def check_key(key: Any, what: str = "key") -> bytes:
    """`key` as bytes. TypeError unless it is bytes-like (bytes, bytearray, memoryview, a numpy
    row: a str is not a key, keys are binary, from ChainHasher); ValueError unless it is 16
    bytes long."""
    if isinstance(key, bytes):
        b = key
    else:
        try:
            b = memoryview(key).tobytes()
        except TypeError:
            raise TypeError(f"{what}: a block key is {KEY_BYTES} bytes (bytes-like, as "
                            f"ChainHasher.keys makes them), not {type(key).__name__}") from None
    if len(b) != KEY_BYTES:
        raise ValueError(f"{what}: a block key is {KEY_BYTES} bytes, this one {len(b)}")
    return b


def check_keys(keys: Any, what: str = "keys") -> List[bytes]:
    """Each key checked as check_key does; `keys` must be a sequence of keys, not one key."""
    if isinstance(keys, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"{what}: a sequence of keys (e.g. a list), not one "
                        f"{type(keys).__name__}")
    try:
        items = list(keys)
    except TypeError:
        raise TypeError(f"{what}: a sequence of keys, not {type(keys).__name__}") from None
    return [check_key(k, f"{what}[{i}]") for i, k in enumerate(items)]


def new_blocks(keys: Sequence[bytes], payloads: Sequence[Any], cached: int = 0) -> List[Block]:
    """The (key, parent, payload) triples of the blocks of the chain `keys` from `cached` on,
    for Client.put: block i's parent is keys[i - 1] (None for the chain's first block) and
    `payloads[j]` is the KV bytes of block `cached + j`.

        cached = kv.lookup(keys).matched
        kv.put(new_blocks(keys, kv_of_blocks_after(cached), cached), layout=LLAMA3_8B)
    """
    keys = check_keys(keys)
    if not 0 <= cached <= len(keys):
        raise ValueError(f"cached: {cached} is not in [0, {len(keys)}] (the chain's length)")
    if len(payloads) != len(keys) - cached:
        raise ValueError(f"payloads: {len(payloads)} given for the {len(keys) - cached} blocks "
                         f"after the {cached} cached ones")
    return [(keys[i], keys[i - 1] if i else None, payloads[i - cached])
            for i in range(cached, len(keys))]
