#!/usr/bin/python3
"""Writes the golden KV-event payloads that src/kvevents/kv_events_test.cc decodes (and, for the
files of the two current forms, re-encodes byte for byte).

Written from vLLM's protocol alone (vllm/distributed/kv_events.py: msgspec structs, omit_defaults,
tagged unions), with Debian's python3-msgpack, so the C++ codec is checked against something
other than itself. Rerun only when the set changes:
    /usr/bin/python3 tests/data/kv_events/gen_golden.py tests/data/kv_events
"""
import os
import sys

import msgpack

TS = 1700000000.5
SHA_A = bytes(range(32))
SHA_B = bytes(range(32, 64))


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def stored_array(hashes, parent, tokens, block_size, lora_id, medium, lora_name, *trailing):
    return ["BlockStored", hashes, parent, tokens, block_size, lora_id, medium, lora_name,
            *trailing]


GOLDEN = {
    # Array form (msgspec array_like), 64-bit integer hashes: a salted prompt's first two blocks
    # under a LoRA adapter, one removed, then everything cleared; data-parallel rank 1.
    "array_int.msgpack": [
        TS,
        [
            stored_array([0x1122334455667788, 0xFFFFFFFFFFFFFFFF], None,
                         [1, 2, 3, 4, 5, 6, 7, 70000], 4, 7, "GPU", "sql-lora",
                         [["sql-lora", "salt-1"], ["sql-lora"]], 0),
            ["BlockRemoved", [0xFFFFFFFFFFFFFFFF], "GPU"],
            ["AllBlocksCleared"],
        ],
        1,
    ],
    # Map form (tag under "type"), SHA-256 byte hashes, a child block offloaded to the CPU.
    "map_bytes.msgpack": {
        "ts": TS,
        "events": [
            {"type": "BlockStored", "block_hashes": [SHA_B], "parent_block_hash": SHA_A,
             "token_ids": [9, 8], "block_size": 2, "lora_id": None, "medium": "CPU",
             "lora_name": None},
            {"type": "BlockRemoved", "block_hashes": [SHA_A, SHA_B], "medium": "CPU",
             "group_idx": 1},
        ],
    },
    # An old sender: BlockStored without medium and lora_name, BlockRemoved without medium, no
    # data-parallel rank.
    "old_sender.msgpack": [
        TS,
        [
            ["BlockStored", [11, 12], None, [1, 2, 3, 4], 2, None],
            ["BlockRemoved", [11]],
        ],
    ],
    # A newer sender: fields and event kinds this codec does not know, which it must skip.
    "new_sender.msgpack": [
        TS,
        [
            stored_array([21], 20, [5, 6], 2, None, "GPU", None, None, None, "full_attention",
                         None, "some-future-field", 42),
            ["BlockPinned", [21], "GPU"],
            ["AllBlocksCleared", "future"],
        ],
        0,
        "future-batch-field",
    ],
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    for name, obj in GOLDEN.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(pack(obj))


if __name__ == "__main__":
    main()
