"""Client of kvtier-router (kvtier.v1.RouteService): which kvtierd should serve a prompt."""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import grpc

from kvtier import routing
from kvtier.client import KvtierError
from kvtier.keys import ChainHasher, KeyNamespace
from kvtier.v1 import router_pb2, router_pb2_grpc


@dataclasses.dataclass
class Route:
    nodes: List[str]             # kvtierd addresses, best first (then where to go if it fails)
    routing_depth: int           # blocks in the routing key
    expected_cached_blocks: int  # leading blocks the first node holds (cache-aware routers)


@dataclasses.dataclass
class Member:
    address: str
    weight: float
    healthy: bool
    decisions: int
    load: float


class RouterClient:
    """Asks kvtier-router where a prompt's prefix lives.

        with RouterClient("127.0.0.1:7800") as router:
            route = router.route("acme", tokens=prompt, model="llama-3-8b",
                                 layout_fingerprint=LLAMA3_8B.fingerprint())
            with Client(route.nodes[0], tenant="acme") as kv: ...

    Give the prompt as `tokens` (the router computes the keys with the namespace
    {tenant, model, layout_fingerprint, adapter} and `block_tokens`, as kvtier.ChainHasher would
    with tenant_salt = the tenant's name) or as its chain of 16-byte `keys`.

    Or route in this process, without a round trip per request: `refresh_members()` fetches the
    healthy members, their loads and the routing parameters, then `route_locally(...)` (same
    arguments as `route`) decides with the router's rules (kvtier.routing). The ring and the
    bound are the router's; placements and loads since the refresh are this client's own.
    """

    def __init__(self, address: str, *, timeout: float = 5.0):
        if not address:
            raise ValueError("address: must be set")
        self._channel = grpc.insecure_channel(address)
        self._stub = router_pb2_grpc.RouteServiceStub(self._channel)
        self._timeout = timeout
        self._local: Optional[routing.Router] = None
        self._loads: List[float] = []

    def __enter__(self) -> "RouterClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, fn, request):
        try:
            return fn(request, timeout=self._timeout)
        except grpc.RpcError as e:
            raise KvtierError(e.code(), e.details() or "") from None

    def route(self, tenant: str, *, tokens: Optional[Sequence[int]] = None,
              keys: Optional[Sequence[bytes]] = None, model: str = "", block_tokens: int = 16,
              layout_fingerprint: int = 0, adapter: str = "", cache_salt: str = "") -> Route:
        """The nodes for a prompt, best first. `cache_salt` is the request's salt at the engines
        (vLLM's cache_salt), for routers that follow engines' KV events."""
        if (tokens is None) == (keys is None):
            raise ValueError("give tokens or keys (one of the two)")
        req = router_pb2.RouteRequest(tenant=tenant, model=model, block_tokens=block_tokens,
                                      layout_fingerprint=layout_fingerprint, adapter=adapter,
                                      cache_salt=cache_salt)
        if tokens is not None:
            req.tokens.extend(tokens)
        else:
            if any(len(k) != 16 for k in keys):
                raise ValueError("keys: each must be 16 bytes")
            req.packed_keys = b"".join(keys)
        res = self._call(self._stub.Route, req)
        return Route(list(res.nodes), res.routing_depth, res.expected_cached_blocks)

    def members(self) -> List[Member]:
        res = self._call(self._stub.Members, router_pb2.MembersRequest())
        return [Member(m.address, m.weight, m.healthy, m.decisions, m.load) for m in res.members]

    def refresh_members(self) -> None:
        """Fetches the membership for route_locally; placements on remaining nodes are kept."""
        res = self._call(self._stub.Members, router_pb2.MembersRequest())
        nodes = [(m.address, m.weight) for m in res.members if m.healthy]
        if (self._local is None or self._local.load_factor != res.load_factor
                or self._local.points_per_weight != res.points_per_weight):
            self._local = routing.Router(nodes, res.load_factor, res.points_per_weight)
        else:
            self._local.set_nodes(nodes)
        self._loads = [m.load for m in res.members if m.healthy]

    def route_locally(self, tenant: str, *, tokens: Optional[Sequence[int]] = None,
                      keys: Optional[Sequence[bytes]] = None, model: str = "",
                      block_tokens: int = 16, layout_fingerprint: int = 0,
                      adapter: str = "") -> Route:
        """Like route(), decided here with the membership of the last refresh_members()."""
        if self._local is None:
            raise RuntimeError("route_locally: call refresh_members() first")
        if not self._local.ring.nodes:
            raise KvtierError(grpc.StatusCode.UNAVAILABLE,
                              "no healthy kvtierd node at the last refresh_members()")
        if not tenant:
            raise ValueError("tenant: must be set")
        if (tokens is None) == (keys is None):
            raise ValueError("give tokens or keys (one of the two)")
        if tokens is not None:
            hasher = ChainHasher(KeyNamespace(tenant.encode(), model, layout_fingerprint, adapter),
                                 block_tokens)
            keys = hasher.keys(tokens)
        elif not keys:
            raise ValueError("keys: empty")
        if keys:
            node, depth, key = self._local.route(list(keys), self._loads)
        else:  # shorter than one block: routed by the namespace root, as the router does
            node, depth, key = self._local.pick(hasher.root, self._loads), 0, hasher.root
        self._loads[node] += max(len(keys), 1)  # as the router counts unreported work
        order = self._local.ring.candidates(routing.ring_hash(key))
        names = [self._local.ring.nodes[n][0] for n in [node] + [n for n in order if n != node]]
        return Route(names, depth, 0)

    def report(self, node: str, prefilled_blocks: int) -> None:
        """Tells the router what a routed request cost `node` (its load signal)."""
        self._call(self._stub.Report,
                   router_pb2.ReportRequest(node=node, prefilled_blocks=prefilled_blocks))
