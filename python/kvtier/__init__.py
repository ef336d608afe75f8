"""kvtier: Python client of the kvtier KV-cache tiering service.

    from kvtier import Client, ChainHasher, KeyNamespace, LLAMA3_8B, new_blocks

    hasher = ChainHasher(KeyNamespace(tenant_salt=b"acme", model_id="llama-3-8b",
                                      layout_fingerprint=LLAMA3_8B.fingerprint()), 16)
    keys = hasher.keys(prompt_token_ids)
    with Client("127.0.0.1:7700", tenant="acme") as kv:
        cached = kv.lookup(keys).matched          # reuse this much of the prefix
        blocks = kv.get(keys[:cached])            # its KV bytes
        kv.put(new_blocks(keys, kv_of_new_blocks, cached), layout=LLAMA3_8B)

kvtier.aio has the same clients for asyncio. Keys (kvtier.keys) need only xxhash; the clients
need grpcio, protobuf and the stubs generated when the package was built.
"""
import os as _os

if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "v1")):
    # An editable install (pip install -e): the generated stubs and _version.py are in
    # site-packages/kvtier, beside these sources on the package's path.
    from pkgutil import extend_path as _extend_path
    __path__ = _extend_path(__path__, __name__)

try:
    from kvtier._version import __version__
except ImportError:  # the sources alone, never built (no stubs either)
    __version__ = "0+unknown"

from kvtier.keys import (DEEPSEEK_V3, LLAMA3_8B, XXH3_SEED, Block, ChainHasher, KeyNamespace,
                         KvLayout, new_blocks)

__all__ = ["__version__", "ChainHasher", "KeyNamespace", "KvLayout", "LLAMA3_8B", "DEEPSEEK_V3",
           "XXH3_SEED", "Block", "new_blocks", "Client", "KvtierError", "PutResult", "Lookup",
           "Lease", "LeasedBlock",
           "RouterClient", "Route", "Member", "WorkerClient", "SequenceQuery", "DecodeResult",
           "LayerOutput", "DecodeStats", "aio"]


def __getattr__(name):
    # The clients need grpc and the generated stubs; key computation does not.
    if name == "KvtierError":
        from kvtier._grpc import KvtierError
        return KvtierError
    if name in ("Client", "PutResult", "Lookup", "Lease", "LeasedBlock"):
        from kvtier import client
        return getattr(client, name)
    if name in ("RouterClient", "Route", "Member"):
        from kvtier import router
        return getattr(router, name)
    if name in ("WorkerClient", "SequenceQuery", "DecodeResult", "LayerOutput", "DecodeStats"):
        from kvtier import worker
        return getattr(worker, name)
    if name == "aio":
        import importlib
        return importlib.import_module("kvtier.aio")
    raise AttributeError(f"module 'kvtier' has no attribute {name!r}")
