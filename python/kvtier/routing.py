"""kvtier-router's routing decision in Python, for RouterClient.route_locally.

The same rules as the C++ router (src/router/router.h): the routing key is the shallowest prefix
key shared by at most epsilon / N of recent requests (load_factor = 1 + epsilon; a count-mean-min
sketch: a count-min sketch less each counter's mean collisions, halved every 4,096 requests); a
new key goes to the first node in its consistent-hashing order at or under its share of the
work; a known key goes back to the node it was placed on while that node is within
load_factor x its share, else to the first ring candidate within it. tests/data/
router_golden.json holds decisions the C++ router made; this module must repeat them.
"""
from __future__ import annotations

import bisect
import collections
import math
import struct
from typing import Dict, List, Optional, Sequence, Tuple

import xxhash

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIN_EPSILON = 1.0 / 64  # the C++ kMinEpsilon


def _words(key: bytes) -> Tuple[int, int]:
    if len(key) != 16:
        raise ValueError("keys: each must be 16 bytes")
    return struct.unpack(">QQ", key)  # hi, lo


def ring_hash(key: bytes) -> int:
    hi, lo = _words(key)
    return hi ^ ((lo * _GOLDEN) & _MASK)


class HashRing:
    """Consistent hashing with weighted virtual nodes (points_per_weight a unit of weight)."""

    def __init__(self, nodes: Sequence[Tuple[str, float]], points_per_weight: int = 160):
        self.nodes = list(nodes)
        points = []
        for i, (name, weight) in enumerate(self.nodes):
            for p in range(max(1, int(math.floor(weight * points_per_weight + 0.5)))):
                points.append((xxhash.xxh3_64_intdigest(f"{name}#{p}".encode()), i))
        points.sort()
        self._positions = [p for p, _ in points]
        self._owners = [n for _, n in points]

    def candidates(self, h: int) -> List[int]:
        """Every node, in ring order from hash `h` (the first is its home)."""
        out: List[int] = []
        if not self._positions:
            return out
        at = bisect.bisect_left(self._positions, h)
        for step in range(len(self._positions)):
            n = self._owners[(at + step) % len(self._positions)]
            if n not in out:
                out.append(n)
                if len(out) == len(self.nodes):
                    break
        return out


class _Popularity:
    """Recent share of requests per key: the C++ PrefixPopularity, counter for counter."""

    def __init__(self, width: int = 1 << 14, window: int = 4096):
        width = 1 << (max(width, 64) - 1).bit_length()
        self._mask = width - 1
        self._window = max(window, 16)
        self._since = 0
        self._requests = 0.0
        self._adds = 0.0  # keys added, decayed with the counters
        self._counters = [0] * (4 * width)

    def _slots(self, key: bytes):
        hi, lo = _words(key)
        for row in range(4):
            h = ((lo * (_GOLDEN + 2 * row)) & _MASK) ^ (hi >> (row * 7))
            yield row * (self._mask + 1) + ((h ^ (h >> 29)) & self._mask)

    def add_request(self) -> None:
        self._requests += 1
        self._since += 1
        if self._since < self._window:
            return
        self._since = 0
        self._requests /= 2
        self._adds /= 2
        self._counters = [c >> 1 for c in self._counters]

    def add_and_share(self, key: bytes) -> Tuple[float, bool]:
        """Counts `key`; (its share now, whether its smallest counter was nonzero before)."""
        self._adds += 1
        m = None
        for s in self._slots(key):
            self._counters[s] += 1
            m = self._counters[s] if m is None else min(m, self._counters[s])
        return self._share_of(m), m > 1

    def _share_of(self, estimate: int) -> float:
        if self._requests <= 0:
            return 0.0
        noise = self._adds / (self._mask + 1)
        return max(0.0, estimate - noise) / self._requests


class Router:
    """One routing thread's router: ring, popularity and placements (not thread-safe)."""

    def __init__(self, nodes: Sequence[Tuple[str, float]], load_factor: float = 1.25,
                 points_per_weight: int = 160, placement_entries: int = 1 << 16):
        self.load_factor = load_factor
        self.points_per_weight = points_per_weight
        self._popularity = _Popularity()
        self._placements: "collections.OrderedDict[bytes, str]" = collections.OrderedDict()
        self._placement_entries = placement_entries
        self.set_nodes(nodes)

    def set_nodes(self, nodes: Sequence[Tuple[str, float]]) -> None:
        """New membership; placements on nodes that remain (by name) are kept."""
        self.ring = HashRing(nodes, self.points_per_weight)
        self._index: Dict[str, int] = {name: i for i, (name, _) in enumerate(self.ring.nodes)}
        self._total_weight = 0.0
        for _, w in self.ring.nodes:
            self._total_weight += w

    def route(self, chain: Sequence[bytes], loads: Sequence[float],
              slack: float = 0.0) -> Tuple[int, int, Optional[bytes]]:
        """(node index, routing depth, routing key) for a prompt's key chain; node -1 when the
        chain is empty or there are no nodes."""
        if not chain or not self.ring.nodes:
            return -1, 0, None
        self._popularity.add_request()
        epsilon = min(max(self.load_factor - 1.0, _MIN_EPSILON), 1.0)
        hot = epsilon / len(self.ring.nodes)
        depth, key, fresh = len(chain), chain[-1], False
        for d, k in enumerate(chain):
            share, seen = self._popularity.add_and_share(k)
            fresh = not seen
            if share <= hot:
                depth, key = d + 1, k
                break
        return self._place(key, fresh, loads, slack), depth, key

    def _place(self, key: bytes, fresh: bool, loads: Sequence[float], slack: float) -> int:
        name = self._placements.get(key)
        n = -1
        if name is not None:
            self._placements.move_to_end(key)
            n = self._index.get(name, -1)
        if n >= 0 and self.within_bound(n, loads, slack):
            return n
        if n < 0 and fresh:
            n = self._pick_under_share(key, loads, slack)
        else:
            n = self._pick(key, loads, slack)
        self._placements[key] = self.ring.nodes[n][0]
        self._placements.move_to_end(key)
        if len(self._placements) > self._placement_entries:
            self._placements.popitem(last=False)
        return n

    def within_bound(self, n: int, loads: Sequence[float], slack: float = 0.0) -> bool:
        total = 0.0
        for l in loads:
            total += l
        share = self.ring.nodes[n][1] / self._total_weight
        return loads[n] <= self.load_factor * total * share + slack

    def _pick_under_share(self, key: bytes, loads: Sequence[float], slack: float) -> int:
        total = 0.0
        for l in loads:
            total += l
        candidates = self.ring.candidates(ring_hash(key))
        for n in candidates:
            if loads[n] <= total * self.ring.nodes[n][1] / self._total_weight + slack:
                return n
        return candidates[0]

    def pick(self, key: bytes, loads: Sequence[float], slack: float = 0.0) -> int:
        """The first ring candidate of `key` within its bound (no placement)."""
        return self._pick(key, loads, slack)

    def _pick(self, key: bytes, loads: Sequence[float], slack: float) -> int:
        total = 0.0
        for l in loads:
            total += l
        candidates = self.ring.candidates(ring_hash(key))
        least = candidates[0]
        for n in candidates:
            share = self.ring.nodes[n][1] / self._total_weight
            if loads[n] <= self.load_factor * total * share + slack:
                return n
            if loads[n] / share < loads[least] / (self.ring.nodes[least][1] / self._total_weight):
                least = n
        return least
