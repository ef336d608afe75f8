"""kvtier: Python client of the kvtier KV-cache tiering service.

    from kvtier import Client, ChainHasher, KeyNamespace, LLAMA3_8B

    hasher = ChainHasher(KeyNamespace(tenant_salt=b"acme", model_id="llama-3-8b",
                                      layout_fingerprint=LLAMA3_8B.fingerprint()), 16)
    keys = hasher.keys(prompt_token_ids)
    with Client("127.0.0.1:7700", tenant="acme") as kv:
        cached = kv.lookup(keys).matched          # reuse this much of the prefix
        blocks = kv.get(keys[:cached])            # its KV bytes
        kv.put([(keys[i], keys[i - 1] if i else None, kv_bytes[i])
                for i in range(cached, len(keys))])
"""
from kvtier.keys import (DEEPSEEK_V3, LLAMA3_8B, XXH3_SEED, ChainHasher, KeyNamespace,
                         KvLayout)

__all__ = ["ChainHasher", "KeyNamespace", "KvLayout", "LLAMA3_8B", "DEEPSEEK_V3", "XXH3_SEED",
           "Client", "KvtierError", "PutResult", "Lookup", "RouterClient", "Route", "Member",
           "WorkerClient", "SequenceQuery", "DecodeResult", "LayerOutput", "DecodeStats"]


def __getattr__(name):
    # The client needs the generated gRPC stubs; key computation does not.
    if name in ("Client", "KvtierError", "PutResult", "Lookup"):
        from kvtier import client
        return getattr(client, name)
    if name in ("RouterClient", "Route", "Member"):
        from kvtier import router
        return getattr(router, name)
    if name in ("WorkerClient", "SequenceQuery", "DecodeResult", "LayerOutput", "DecodeStats"):
        from kvtier import worker
        return getattr(worker, name)
    raise AttributeError(name)
