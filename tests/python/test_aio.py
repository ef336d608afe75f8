"""kvtier.aio: the asyncio clients against real kvtierd, kvtier-router and kvtier-worker
processes, answering as the blocking clients do.

Run by ctest as: /usr/bin/python3 -m unittest (PYTHONPATH=build/python, KVTIER_BINARY_DIR and
KVTIER_SOURCE_DIR set).
"""
import asyncio
import unittest

import grpc

import kvtier
import kvtier.aio
from kvtier import ChainHasher, KeyNamespace, KvLayout, KvtierError
from test_client import (Daemon, TlsDaemon, metadata_recording_router, start_router,
                         start_worker)

LAYOUT = KvLayout("gqa", "fp16", layers=2, kv_heads=2, head_dim=16, block_tokens=16)


class AioCluster(unittest.IsolatedAsyncioTestCase):
    """One kvtierd, a kvtier-router and a kvtier-worker in front of it."""

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon()
        cls.router = start_router(cls.daemon)
        cls.worker = start_worker(cls.daemon)

    @classmethod
    def tearDownClass(cls):
        cls.worker.close()
        cls.router.close()
        cls.daemon.close()

    def chain(self, tenant, n):
        hasher = ChainHasher(KeyNamespace(tenant.encode(), "model", LAYOUT.fingerprint()), 16)
        keys = hasher.keys(list(range(16 * n)))
        return keys, [bytes([i + 1]) * LAYOUT.bytes_per_block for i in range(n)]

    async def test_put_lookup_get_delete_stats(self):
        keys, payloads = self.chain("aio", 4)
        async with kvtier.aio.Client(self.daemon.address, "aio") as kv:
            res = await kv.put(kvtier.new_blocks(keys[:2], payloads[:2]), layout=LAYOUT)
            self.assertEqual((res.stored, res.present), (2, 0))
            found = await kv.lookup(keys)
            self.assertEqual((found.matched, found.tiers), (2, ["host", "host"]))
            res = await kv.put(kvtier.new_blocks(keys, payloads), layout=LAYOUT)
            self.assertEqual((res.stored, res.present), (2, 2))
            self.assertEqual(await kv.get(keys + [b"\x01" * 16]), payloads + [None])
            self.assertEqual(await kv.delete(keys[3:]), 1)
            self.assertEqual((await kv.lookup(keys)).matched, 3)
            stats = await kv.stats()
            self.assertGreaterEqual(stats["puts"], 4)
            self.assertEqual(stats["tiers"]["host"]["capacity_bytes"], 64 << 20)

    async def test_concurrent_gets_on_one_channel(self):
        keys, payloads = self.chain("aio-many", 8)
        async with kvtier.aio.Client(self.daemon.address, "aio-many", chunk_bytes=1000) as kv:
            await kv.put(kvtier.new_blocks(keys, payloads))
            got = await asyncio.gather(*(kv.get([k]) for k in keys))
        self.assertEqual(got, [[p] for p in payloads])

    async def test_a_long_get_goes_in_pieces(self):
        # The blocking client's test reaches the daemon's real limit (65,536 keys); here a
        # smaller piece size keeps the test short.
        key = b"\x08" * 16
        missing = [i.to_bytes(16, "little") for i in range(1, 250)]
        async with kvtier.aio.Client(self.daemon.address, "aio-long") as kv:
            kv.GET_PIECE_KEYS = 100
            await kv.put([(key, None, b"x" * 100)])
            got = await kv.get(missing + [key])
        self.assertEqual(len(got), 250)
        self.assertEqual(got[-1], b"x" * 100)
        self.assertEqual(sum(g is not None for g in got), 1)

    async def test_errors_as_the_blocking_client_raises_them(self):
        async with kvtier.aio.Client(self.daemon.address, "aio-errors") as kv:
            with self.assertRaises(KvtierError) as e:
                await kv.put([(b"\x02" * 16, None, b"wrong size")], layout=LAYOUT)
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIsInstance(e.exception, grpc.RpcError)
            with self.assertRaisesRegex(TypeError, r"keys\[0\]: .*, not str"):
                await kv.get(["00" * 16])
            with self.assertRaisesRegex(TypeError, r"blocks\[0\] payload"):
                await kv.put([(b"\x02" * 16, None, "text")])
        async with kvtier.aio.Client("127.0.0.1:1", "t", timeout=2, attempts=2) as kv:
            with self.assertRaises(KvtierError) as e:
                await kv.lookup([b"\x00" * 16])
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)

    async def test_router(self):
        async with kvtier.aio.RouterClient(self.router.address) as r:
            route = await r.route("py", tokens=list(range(100)), model="m")
            self.assertEqual(route.nodes, [self.daemon.address])
            self.assertGreaterEqual(route.routing_depth, 1)
            self.assertEqual((await r.route("py", keys=[b"k" * 16] * 3)).nodes,
                             [self.daemon.address])
            await r.report(self.daemon.address, 5)
            with self.assertRaises(RuntimeError):
                r.route_locally("py", tokens=list(range(100)))
            await r.refresh_members()
            local = r.route_locally("py", tokens=list(range(100)), model="m")
            self.assertEqual((local.nodes, local.routing_depth),
                             ([self.daemon.address], route.routing_depth))
            [m] = await r.members()
            self.assertEqual((m.address, m.healthy), (self.daemon.address, True))
            with self.assertRaises(KvtierError) as e:
                await r.route("", tokens=[1, 2, 3])
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

    async def test_worker(self):
        keys, _ = self.chain("aio-worker", 3)
        payloads = [bytes(LAYOUT.bytes_per_block) for _ in keys]  # zeros: a uniform softmax
        async with kvtier.aio.Client(self.daemon.address, "aio-worker") as kv:
            await kv.put(kvtier.new_blocks(keys, payloads), layout=LAYOUT)
        q = {0: [0.5] * (4 * 16)}
        async with kvtier.aio.WorkerClient(self.worker.address) as w:
            r = await w.decode("aio-worker", LAYOUT,
                               [kvtier.SequenceQuery(keys=keys, queries=q, context_tokens=40)])
            out = r.sequences[0][0]
            self.assertEqual(out.out, [0.0] * (4 * 16))
            self.assertEqual(len(out.lse), 4)
            self.assertGreater(r.stats.bytes_fetched, 0)
            with self.assertRaises(KvtierError) as e:
                await w.decode("aio-worker", LAYOUT, [kvtier.SequenceQuery(
                    keys=keys + [b"\x77" * 16], queries=q)])
            self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)

    async def test_router_token(self):
        server, seen = metadata_recording_router()
        try:
            async with kvtier.aio.RouterClient(f"127.0.0.1:{server.port}", token="t-1") as r:
                await r.members()
            self.assertEqual(seen, [("Bearer t-1",)])
        finally:
            server.stop(None)


class AioTls(unittest.IsolatedAsyncioTestCase):
    """The asyncio client over mutual TLS, with file paths."""

    @classmethod
    def setUpClass(cls):
        cls.daemon = TlsDaemon()
        cls.certs = cls.daemon.certs

    @classmethod
    def tearDownClass(cls):
        cls.daemon.close()

    async def test_round_trip(self):
        key = b"\x12" * 16
        async with kvtier.aio.Client(self.daemon.address, "tls", tls_ca=self.certs["ca.pem"],
                                     tls_cert=self.certs["client.pem"],
                                     tls_key=self.certs["client.key"]) as kv:
            await kv.put([(key, None, b"aio over tls")])
            self.assertEqual(await kv.get([key]), [b"aio over tls"])
        async with kvtier.aio.Client(self.daemon.address, "tls", tls_ca=self.certs["ca.pem"],
                                     timeout=5, attempts=1) as kv:
            with self.assertRaises(KvtierError) as e:  # no client certificate
                await kv.get([key])
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)


if __name__ == "__main__":
    unittest.main()
