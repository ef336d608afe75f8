"""Client of kvtier-router (kvtier.v1.RouteService): which kvtierd should serve a prompt.

This is the blocking client; kvtier.aio.RouterClient has the same methods for asyncio.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import grpc

from kvtier import routing
from kvtier._grpc import Closing, KvtierError, Pem
from kvtier.keys import ChainHasher, KeyNamespace, check_keys
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


def _route_request(tenant: str, tokens: Optional[Sequence[int]], keys: Optional[Sequence[bytes]],
                   model: str, block_tokens: int, layout_fingerprint: int, adapter: str,
                   cache_salt: str) -> router_pb2.RouteRequest:
    if (tokens is None) == (keys is None):
        raise ValueError("give tokens or keys (one of the two)")
    req = router_pb2.RouteRequest(tenant=tenant, model=model, block_tokens=block_tokens,
                                  layout_fingerprint=layout_fingerprint, adapter=adapter,
                                  cache_salt=cache_salt)
    if tokens is not None:
        req.tokens.extend(tokens)
    else:
        req.packed_keys = b"".join(check_keys(keys))
    return req


def _route_of(res: router_pb2.RouteResponse) -> Route:
    return Route(list(res.nodes), res.routing_depth, res.expected_cached_blocks)


def _members_of(res: router_pb2.MembersResponse) -> List[Member]:
    return [Member(m.address, m.weight, m.healthy, m.decisions, m.load) for m in res.members]


class _LocalRoutes:
    """route_locally's state: the router's rules over the membership of the last refresh."""

    def __init__(self):
        self._local: Optional[routing.Router] = None
        self._loads: List[float] = []

    def refresh(self, res: router_pb2.MembersResponse) -> None:
        nodes = [(m.address, m.weight) for m in res.members if m.healthy]
        if (self._local is None or self._local.load_factor != res.load_factor
                or self._local.points_per_weight != res.points_per_weight):
            self._local = routing.Router(nodes, res.load_factor, res.points_per_weight)
        else:
            self._local.set_nodes(nodes)
        self._loads = [m.load for m in res.members if m.healthy]

    def route(self, tenant: str, tokens: Optional[Sequence[int]],
              keys: Optional[Sequence[bytes]], model: str, block_tokens: int,
              layout_fingerprint: int, adapter: str) -> Route:
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
        else:
            keys = check_keys(keys)
            if not keys:
                raise ValueError("keys: empty")
        if keys:
            node, depth, key = self._local.route(list(keys), self._loads)
        else:  # shorter than one block: routed by the namespace root, as the router does
            node, depth, key = self._local.pick(hasher.root, self._loads), 0, hasher.root
        self._loads[node] += max(len(keys), 1)  # as the router counts unreported work
        order = self._local.ring.candidates(routing.ring_hash(key))
        names = [self._local.ring.nodes[n][0] for n in [node] + [n for n in order if n != node]]
        return Route(names, depth, 0)


class RouterClient(Closing):
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

    `token`, TLS (`tls_ca`, `tls_cert`, `tls_key`: file paths or PEM bytes) and
    `tls_server_name` are as kvtier.Client takes them, for a router behind an authenticating or
    TLS-terminating proxy. A failed call raises KvtierError.
    """

    def __init__(self, address: str, *, token: Optional[str] = None, timeout: float = 5.0,
                 tls_ca: Pem = None, tls_cert: Pem = None, tls_key: Pem = None,
                 tls_server_name: Optional[str] = None, max_message_bytes: int = 64 << 20):
        super().__init__(address, token, tls_ca, tls_cert, tls_key, tls_server_name,
                         max_message_bytes)
        self._stub = router_pb2_grpc.RouteServiceStub(self._channel)
        self._timeout = timeout
        self._routes = _LocalRoutes()

    def _call(self, fn, request):
        try:
            return fn(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise KvtierError.of(e) from None

    def route(self, tenant: str, *, tokens: Optional[Sequence[int]] = None,
              keys: Optional[Sequence[bytes]] = None, model: str = "", block_tokens: int = 16,
              layout_fingerprint: int = 0, adapter: str = "", cache_salt: str = "") -> Route:
        """The nodes for a prompt, best first. `cache_salt` is the request's salt at the engines
        (vLLM's cache_salt), for routers that follow engines' KV events."""
        req = _route_request(tenant, tokens, keys, model, block_tokens, layout_fingerprint,
                             adapter, cache_salt)
        return _route_of(self._call(self._stub.Route, req))

    def members(self) -> List[Member]:
        """The router's membership: every kvtierd with its weight, health, decisions and load."""
        return _members_of(self._call(self._stub.Members, router_pb2.MembersRequest()))

    def refresh_members(self) -> None:
        """Fetches the membership for route_locally; placements on remaining nodes are kept."""
        self._routes.refresh(self._call(self._stub.Members, router_pb2.MembersRequest()))

    def route_locally(self, tenant: str, *, tokens: Optional[Sequence[int]] = None,
                      keys: Optional[Sequence[bytes]] = None, model: str = "",
                      block_tokens: int = 16, layout_fingerprint: int = 0,
                      adapter: str = "") -> Route:
        """Like route(), decided here with the membership of the last refresh_members()."""
        return self._routes.route(tenant, tokens, keys, model, block_tokens, layout_fingerprint,
                                  adapter)

    def report(self, node: str, prefilled_blocks: int) -> None:
        """Tells the router what a routed request cost `node` (its load signal)."""
        self._call(self._stub.Report,
                   router_pb2.ReportRequest(node=node, prefilled_blocks=prefilled_blocks))
