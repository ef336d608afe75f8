#!/usr/bin/python3
"""Writes block_keys.json: test vectors for kvtier's block keys and layout fingerprints.

An independent implementation of docs/block-keys.md (Python, Debian's python3-xxhash and hashlib),
so the C++ code is checked against something other than itself. Rerun only when the scheme changes:
    /usr/bin/python3 tests/data/gen_block_keys.py > tests/data/block_keys.json
"""
import hashlib
import json
import struct

import xxhash

XXH3_SEED = 0x4B56544945523031  # b"KVTIER01" as a big-endian integer
ALGORITHMS = {"xxh3": 1, "sha256": 2}
KINDS = {"gqa": 1, "mla": 2}
DTYPES = {"fp16": (1, 2), "bf16": (2, 2), "fp8-e4m3": (3, 1)}


def layout_fingerprint(kind, dtype, layers, kv_heads, head_dim, block_tokens, latent_rank, rope_dim):
    gqa = kind == "gqa"
    b = b"KVTIER/LAYOUT/1"
    b += struct.pack("<BB", KINDS[kind], DTYPES[dtype][0])
    b += struct.pack("<IIIIII", layers, kv_heads if gqa else 0, head_dim if gqa else 0,
                     block_tokens, 0 if gqa else latent_rank, 0 if gqa else rope_dim)
    return xxhash.xxh3_64_intdigest(b)


def bytes_per_block(kind, dtype, layers, kv_heads, head_dim, block_tokens, latent_rank, rope_dim):
    size = DTYPES[dtype][1]
    per = 2 * kv_heads * head_dim if kind == "gqa" else latent_rank + rope_dim
    return per * size * layers * block_tokens


def encode_namespace(algorithm, block_tokens, tenant_salt, model_id, fingerprint, adapter_id):
    def field(b):
        return struct.pack("<I", len(b)) + b
    return (b"KVTIER/NS/1" + struct.pack("<BI", ALGORITHMS[algorithm], block_tokens)
            + field(tenant_salt) + field(model_id.encode()) + struct.pack("<Q", fingerprint)
            + field(adapter_id.encode()))


def hash128(algorithm, data):
    if algorithm == "xxh3":
        return xxhash.xxh3_128_digest(data, seed=XXH3_SEED)
    return hashlib.sha256(data).digest()[:16]


def chain(algorithm, ns_bytes, block_tokens, tokens):
    key = hash128(algorithm, ns_bytes)
    root = key
    keys = []
    for i in range(len(tokens) // block_tokens):
        block = tokens[i * block_tokens:(i + 1) * block_tokens]
        key = hash128(algorithm, key + struct.pack("<%dI" % len(block), *block))
        keys.append(key.hex())
    return root.hex(), keys


def lcg_tokens(n, seed, vocab):
    out, x = [], seed
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append((x >> 33) % vocab)
    return out


LAYOUTS = [
    dict(name="llama3-8b", kind="gqa", dtype="bf16", layers=32, kv_heads=8, head_dim=128,
         block_tokens=16, latent_rank=0, rope_dim=0),
    dict(name="deepseek-v3", kind="mla", dtype="bf16", layers=61, kv_heads=0, head_dim=0,
         block_tokens=16, latent_rank=512, rope_dim=64),
    dict(name="small-gqa", kind="gqa", dtype="fp16", layers=2, kv_heads=2, head_dim=16,
         block_tokens=16, latent_rank=0, rope_dim=0),
    dict(name="small-mla", kind="mla", dtype="bf16", layers=2, kv_heads=0, head_dim=0,
         block_tokens=16, latent_rank=32, rope_dim=8),
    dict(name="fp8-gqa-odd-block", kind="gqa", dtype="fp8-e4m3", layers=3, kv_heads=4, head_dim=64,
         block_tokens=7, latent_rank=0, rope_dim=0),
]


def main():
    shape = lambda l: {k: v for k, v in l.items() if k != "name"}
    layouts = []
    for l in LAYOUTS:
        fp = layout_fingerprint(**shape(l))
        layouts.append(dict(l, bytes_per_block=bytes_per_block(**shape(l)), fingerprint="%016x" % fp))
    fps = {l["name"]: int(l["fingerprint"], 16) for l in layouts}

    namespaces = [
        dict(tenant_salt=b"", model_id="", layout_fingerprint=0, adapter_id=""),
        dict(tenant_salt=b"tenant-a", model_id="meta-llama/Meta-Llama-3-8B@main",
             layout_fingerprint=fps["llama3-8b"], adapter_id=""),
        dict(tenant_salt=bytes([0x00, 0xff, 0x10, 0x80]), model_id="deepseek-ai/DeepSeek-V3",
             layout_fingerprint=fps["deepseek-v3"], adapter_id="lora-sql-v2"),
        dict(tenant_salt=b"tenant-b", model_id="meta-llama/Meta-Llama-3-8B@main",
             layout_fingerprint=fps["llama3-8b"], adapter_id=""),
    ]
    token_sets = [
        ("empty", []),
        ("partial-only", list(range(1, 6))),
        ("counting-40", list(range(40))),
        ("max-ids", [0xFFFFFFFF, 0, 0x80000000, 1] * 8),
        ("random-300", lcg_tokens(300, 7, 128256)),
    ]
    plans = [  # (namespace index, block_tokens, algorithm, token set names)
        (0, 16, "xxh3", ["empty", "partial-only", "counting-40", "max-ids"]),
        (1, 16, "xxh3", ["empty", "counting-40", "random-300"]),
        (3, 16, "xxh3", ["counting-40"]),
        (1, 16, "sha256", ["counting-40", "random-300"]),
        (2, 64, "xxh3", ["random-300", "partial-only"]),
        (2, 7, "sha256", ["counting-40"]),
        (0, 1, "xxh3", ["partial-only"]),
        (1, 13, "xxh3", ["random-300"]),
    ]
    tokens_by_name = dict(token_sets)
    cases = []
    for ns_index, block_tokens, algorithm, names in plans:
        ns = namespaces[ns_index]
        ns_bytes = encode_namespace(algorithm, block_tokens, ns["tenant_salt"], ns["model_id"],
                                    ns["layout_fingerprint"], ns["adapter_id"])
        for name in names:
            tokens = tokens_by_name[name]
            root, keys = chain(algorithm, ns_bytes, block_tokens, tokens)
            cases.append(dict(
                name="ns%d/%s/b%d/%s" % (ns_index, algorithm, block_tokens, name),
                hash=algorithm, block_tokens=block_tokens,
                namespace=dict(tenant_salt_hex=ns["tenant_salt"].hex(), model_id=ns["model_id"],
                               layout_fingerprint="%016x" % ns["layout_fingerprint"],
                               adapter_id=ns["adapter_id"]),
                namespace_bytes_hex=ns_bytes.hex(), root=root, tokens=tokens, keys=keys))
    doc = dict(scheme="kvtier block keys v1, see docs/block-keys.md",
               generator="tests/data/gen_block_keys.py", layouts=layouts, cases=cases)
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
