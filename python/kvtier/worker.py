"""Client of kvtier-worker (kvtier.v1.AttentionService): decode attention over a cached prefix.

    from kvtier import WorkerClient, SequenceQuery, LLAMA3_8B

    with WorkerClient("127.0.0.1:7900") as worker:
        result = worker.decode("acme", LLAMA3_8B, [SequenceQuery(tokens=prompt, queries={0: q0})],
                               model="llama-3-8b")
        out, lse = result.sequences[0][0].out, result.sequences[0][0].lse

A query is a flat list of floats: [q_heads][head_dim] for GQA layouts, or (MLA) the absorbed
query [heads][latent_rank] with `q_rope` [heads][rope_dim]. Head-sparse attention takes a head
profile as the dict of a kvtier.head_profile.v1 file (`kvtier profile-heads` writes them).
A block cached nowhere raises KvtierError with code NOT_FOUND; its message names the first
missing block position, from which the caller recomputes.

This is the blocking client; kvtier.aio.WorkerClient has the same methods for asyncio.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence

import grpc

from kvtier._grpc import Closing, KvtierError, Pem
from kvtier.client import _layout_proto
from kvtier.keys import KvLayout, check_keys
from kvtier.v1 import attention_pb2, attention_pb2_grpc

_MODES = {
    None: attention_pb2.ATTENTION_MODE_UNSPECIFIED,
    "dense": attention_pb2.ATTENTION_MODE_DENSE,
    "head_sparse": attention_pb2.ATTENTION_MODE_HEAD_SPARSE,
    "mla": attention_pb2.ATTENTION_MODE_MLA,
}


@dataclasses.dataclass
class SequenceQuery:
    """One sequence of a decode request: its prefix (keys or tokens) and per-layer queries."""
    queries: Mapping[int, Sequence[float]]      # layer -> q
    keys: Optional[Sequence[bytes]] = None      # the prefix's chain of 16-byte keys, or
    tokens: Optional[Sequence[int]] = None      # its tokens (keys computed by the worker)
    q_rope: Mapping[int, Sequence[float]] = dataclasses.field(default_factory=dict)  # MLA
    context_tokens: int = 0                     # 0: every token of the blocks


@dataclasses.dataclass
class LayerOutput:
    layer: int
    out: List[float]  # GQA: [q_heads][head_dim]; MLA: the weighted latent [heads][latent_rank]
    lse: List[float]  # [heads]


@dataclasses.dataclass
class DecodeStats:
    bytes_fetched: int      # read from daemons
    bytes_fetched_ucx: int  # of those, over UCX
    bytes_from_pool: int    # already in the worker's pool
    bytes_skipped: int      # left out by head sparsity
    fetch_us: int
    compute_us: int
    nodes_read: int


@dataclasses.dataclass
class DecodeResult:
    sequences: List[List[LayerOutput]]  # per sequence, per query in request order
    stats: DecodeStats
    device: str                         # "cpu" or the GPU's name


def _profile_proto(profile: Mapping) -> attention_pb2.HeadProfile:
    if profile.get("format", "kvtier.head_profile.v1") != "kvtier.head_profile.v1":
        raise ValueError("profile: format must be kvtier.head_profile.v1")
    p = attention_pb2.HeadProfile(sink=int(profile.get("sink", 0)),
                                  window=int(profile.get("window", 0)))
    for heads in profile["recall"]:
        p.layers.add().recall_heads.extend(int(h) for h in heads)
    return p


def _decode_request(tenant: str, layout: KvLayout, sequences: Sequence[SequenceQuery],
                    mode: Optional[str], profile: Optional[Mapping], scale: float, model: str,
                    adapter: str) -> attention_pb2.DecodeRequest:
    if mode not in _MODES:
        raise ValueError(f"mode: one of {sorted(m for m in _MODES if m)} or None")
    req = attention_pb2.DecodeRequest(tenant=tenant, model=model, adapter=adapter,
                                      layout=_layout_proto(layout), mode=_MODES[mode],
                                      scale=scale)
    if profile is not None:
        req.profile.CopyFrom(_profile_proto(profile))
    for i, s in enumerate(sequences):
        if (s.keys is None) == (s.tokens is None):
            raise ValueError("SequenceQuery: give keys or tokens (one of the two)")
        seq = req.sequences.add(context_tokens=s.context_tokens)
        if s.keys is not None:
            seq.packed_keys = b"".join(check_keys(s.keys, f"sequences[{i}].keys"))
        else:
            seq.tokens.extend(s.tokens)
        for layer, q in s.queries.items():
            lq = seq.queries.add(layer=layer)
            lq.q.extend(q)
            lq.q_rope.extend(s.q_rope.get(layer, ()))
    return req


def _decode_result(res: attention_pb2.DecodeResponse) -> DecodeResult:
    st = res.stats
    return DecodeResult(
        sequences=[[LayerOutput(o.layer, list(o.out), list(o.lse)) for o in s.layers]
                   for s in res.sequences],
        stats=DecodeStats(st.bytes_fetched, st.bytes_fetched_ucx, st.bytes_from_pool,
                          st.bytes_skipped, st.fetch_us, st.compute_us, st.nodes_read),
        device=res.device)


class WorkerClient(Closing):
    """Asks kvtier-worker for decode attention.

    `token`, when the daemons check tokens, is the tenant's bearer token (the worker passes it
    on). TLS (`tls_ca`, `tls_cert`, `tls_key`: file paths or PEM bytes) and `tls_server_name`
    are as kvtier.Client takes them. A failed call raises KvtierError.
    """

    def __init__(self, address: str, *, token: Optional[str] = None, timeout: float = 60.0,
                 tls_ca: Pem = None, tls_cert: Pem = None, tls_key: Pem = None,
                 tls_server_name: Optional[str] = None, max_message_bytes: int = 256 << 20):
        super().__init__(address, token, tls_ca, tls_cert, tls_key, tls_server_name,
                         max_message_bytes)
        self._stub = attention_pb2_grpc.AttentionServiceStub(self._channel)
        self._timeout = timeout

    def decode(self, tenant: str, layout: KvLayout, sequences: Sequence[SequenceQuery], *,
               mode: Optional[str] = None, profile: Optional[Mapping] = None,
               scale: float = 0.0, model: str = "", adapter: str = "") -> DecodeResult:
        """One decode step. mode: "dense", "head_sparse" (needs `profile`) or "mla"; None picks
        dense for GQA layouts and mla for MLA ones. scale 0: 1/sqrt(head dim)."""
        req = _decode_request(tenant, layout, sequences, mode, profile, scale, model, adapter)
        try:
            res = self._stub.Decode(req, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise KvtierError.of(e) from None
        return _decode_result(res)
