"""The Python client: block-key vectors, and round trips against a real kvtierd.

Run by ctest as: /usr/bin/python3 -m unittest (PYTHONPATH=build/python, KVTIER_BINARY_DIR and
KVTIER_SOURCE_DIR set).
"""
import array
import inspect
import json
import math
import os
import pathlib
import random
import re
import struct
import subprocess
import tempfile
import unittest

import grpc

import kvtier
from kvtier import ChainHasher, Client, KeyNamespace, KvLayout, KvtierError

SOURCE = os.environ.get("KVTIER_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BINARY = os.environ.get("KVTIER_BINARY_DIR", os.path.join(SOURCE, "build"))


class BlockKeyVectors(unittest.TestCase):
    def setUp(self):
        with open(os.path.join(SOURCE, "tests", "data", "block_keys.json")) as f:
            self.doc = json.load(f)

    def test_every_case(self):
        self.assertGreaterEqual(len(self.doc["cases"]), 10)
        for case in self.doc["cases"]:
            with self.subTest(case["name"]):
                ns = case["namespace"]
                namespace = KeyNamespace(bytes.fromhex(ns["tenant_salt_hex"]), ns["model_id"],
                                         int(ns["layout_fingerprint"], 16), ns["adapter_id"])
                self.assertEqual(namespace.encode(case["hash"], case["block_tokens"]).hex(),
                                 case["namespace_bytes_hex"])
                hasher = ChainHasher(namespace, case["block_tokens"], case["hash"])
                self.assertEqual(hasher.root.hex(), case["root"])
                self.assertEqual([k.hex() for k in hasher.keys(case["tokens"])], case["keys"])

    def test_layouts(self):
        for layout in self.doc["layouts"]:
            with self.subTest(layout["name"]):
                l = KvLayout(layout["kind"], layout["dtype"], layout["layers"], layout["kv_heads"],
                             layout["head_dim"], layout["block_tokens"], layout["latent_rank"],
                             layout["rope_dim"])
                self.assertEqual(l.bytes_per_block, layout["bytes_per_block"])
                self.assertEqual("%016x" % l.fingerprint(), layout["fingerprint"])

    def test_bad_layouts_name_the_field(self):
        with self.assertRaisesRegex(ValueError, "layers"):
            KvLayout("gqa", "bf16", 0, 8, 128)
        with self.assertRaisesRegex(ValueError, "dtype"):
            KvLayout("gqa", "int4", 1, 8, 128)


class RoutingGolden(unittest.TestCase):
    """kvtier.routing repeats the C++ router's decisions (tests/data/router_golden.json)."""

    def test_every_decision(self):
        from kvtier import routing
        with open(os.path.join(SOURCE, "tests", "data", "router_golden.json")) as f:
            doc = json.load(f)
        router, decided = None, 0
        for i, event in enumerate(doc["events"]):
            if "nodes" in event:
                nodes = [(n["name"], n["weight"]) for n in event["nodes"]]
                if router is None:
                    router = routing.Router(nodes)
                else:
                    router.set_nodes(nodes)
                continue
            chain = [bytes.fromhex(k) for k in event["chain"]]
            node, depth, _ = router.route(chain, event["loads"], doc["slack"])
            self.assertEqual((node, depth), (event["node"], event["depth"]), f"event {i}")
            decided += 1
        self.assertGreaterEqual(decided, 100)


class Listening:
    """A process that prints "... listening on ADDRESS" (kvtierd, kvtier-router, kvtier-worker),
    stopped with SIGTERM."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        name = os.path.basename(args[0])
        line = self.proc.stdout.readline()
        while line.startswith(name + " ") and "listening on " not in line:
            line = self.proc.stdout.readline()  # the metrics and UCX endpoints come first
        if "listening on " not in line:
            self.close()
            raise RuntimeError(f"{name} did not start: {line!r}")
        self.address = line.split("listening on ")[1].strip()

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class Daemon(Listening):
    """A kvtierd on a free loopback port, its data in a temporary directory."""

    def __init__(self, *extra):
        self.dir = tempfile.TemporaryDirectory()
        super().__init__(os.path.join(BINARY, "kvtierd"), "--listen", "127.0.0.1:0", "--data",
                         os.path.join(self.dir.name, "data"), "--host-mib", "64", "--nvme-gib",
                         "1", "--metrics-listen", "", "--log-level", "warn", *extra)

    def close(self):
        super().close()
        self.dir.cleanup()


def start_router(daemon):
    """A kvtier-router in front of `daemon` alone."""
    return Listening(os.path.join(BINARY, "kvtier-router"), "--nodes", daemon.address, "--listen",
                     "127.0.0.1:0", "--metrics-listen", "", "--log-level", "warn")


def start_worker(daemon):
    """A kvtier-worker reading from `daemon` alone, on one thread."""
    return Listening(os.path.join(BINARY, "kvtier-worker"), "--nodes", daemon.address, "--listen",
                     "127.0.0.1:0", "--metrics-listen", "", "--threads", "1", "--log-level",
                     "error")


class LiveRouter(unittest.TestCase):
    """kvtier-router in front of one kvtierd."""

    def test_route_members_report(self):
        daemon = Daemon()
        router = start_router(daemon)
        try:
            with kvtier.RouterClient(router.address) as r:
                route = r.route("py", tokens=list(range(100)), model="m")
                self.assertEqual(route.nodes, [daemon.address])
                self.assertGreaterEqual(route.routing_depth, 1)
                self.assertEqual(r.route("py", keys=[b"k" * 16] * 3).nodes, [daemon.address])
                r.report(daemon.address, 5)
                with self.assertRaises(RuntimeError):
                    r.route_locally("py", tokens=list(range(100)))
                r.refresh_members()
                local = r.route_locally("py", tokens=list(range(100)), model="m")
                self.assertEqual(local.nodes, [daemon.address])
                self.assertEqual(local.routing_depth, route.routing_depth)
                self.assertEqual(r.route_locally("py", tokens=[1, 2]).routing_depth, 0)
                with self.assertRaises(ValueError):
                    r.route_locally("py", keys=[b"short"])
                [m] = r.members()
                self.assertEqual((m.address, m.healthy), (daemon.address, True))
                with self.assertRaises(ValueError):
                    r.route("py")
                with self.assertRaises(KvtierError) as e:
                    r.route("", tokens=[1, 2, 3])
                self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        finally:
            router.close()
            daemon.close()


class LiveDaemon(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.close()

    def test_put_lookup_get_delete_stats(self):
        layout = kvtier.KvLayout("gqa", "fp16", layers=2, kv_heads=2, head_dim=16, block_tokens=16)
        hasher = ChainHasher(KeyNamespace(b"py", "model", layout.fingerprint()), 16)
        keys = hasher.keys(list(range(16 * 4 + 3)))
        self.assertEqual(len(keys), 4)
        payloads = [bytes([i]) * layout.bytes_per_block for i in range(4)]
        blocks = [(keys[i], keys[i - 1] if i else None, payloads[i]) for i in range(4)]
        with Client(self.daemon.address, "py-tenant") as kv:
            res = kv.put(blocks[:2], layout=layout)
            self.assertEqual((res.stored, res.present), (2, 0))
            found = kv.lookup(keys)
            self.assertEqual(found.matched, 2)
            self.assertEqual(found.tiers, ["host", "host"])
            res = kv.put(blocks, layout=layout)
            self.assertEqual((res.stored, res.present), (2, 2))
            self.assertEqual(kv.get(keys + [b"\x01" * 16]), payloads + [None])
            self.assertEqual(kv.delete(keys[3:]), 1)
            self.assertEqual(kv.lookup(keys).matched, 3)
            stats = kv.stats()
            self.assertGreaterEqual(stats["puts"], 4)
            self.assertEqual(stats["tiers"]["host"]["capacity_bytes"], 64 << 20)
        with Client(self.daemon.address, "someone-else") as other:
            self.assertEqual(other.lookup(keys).matched, 0)
            self.assertEqual(other.get(keys[:1]), [None])

    def test_large_blocks_are_chunked(self):
        data = os.urandom(5 << 20)
        key = b"\x07" * 16
        with Client(self.daemon.address, "big", chunk_bytes=1 << 20) as kv:
            self.assertEqual(kv.put([(key, None, data)]).stored, 1)
            self.assertEqual(kv.get([key]), [data])

    def test_a_get_longer_than_the_daemons_limit_goes_in_pieces(self):
        key = b"\x08" * 16
        missing = [i.to_bytes(16, "little") for i in range(1, 70000)]
        with Client(self.daemon.address, "long-get") as kv:
            kv.put([(key, None, b"x" * 100)])
            got = kv.get(missing + [key])
        self.assertEqual(len(got), 70000)
        self.assertEqual(got[-1], b"x" * 100)
        self.assertEqual(sum(g is not None for g in got), 1)

    def test_a_damaged_block_is_dropped_and_reported(self):
        from kvtier.v1 import cache_pb2
        good, bad = os.urandom(1 << 20), bytearray(os.urandom(1 << 20))
        kg, kb = b"\x08" * 16, b"\x09" * 16
        with Client(self.daemon.address, "damage") as kv:
            kv.put([(kg, None, good), (kb, kg, bytes(bad))])
            # Flip one byte of the block where it lies in the daemon's memory.
            plane = kv._stub.DataPlane(cache_pb2.DataPlaneRequest(tenant="damage"), timeout=10)
            self.assertTrue(plane.available)
            lease = kv._stub.Lease(cache_pb2.LeaseRequest(tenant="damage", keys=[kb]), timeout=10)
            kv._stub.Release(cache_pb2.ReleaseRequest(tenant="damage", lease_id=lease.lease_id),
                             timeout=10)
            bad[777] ^= 0x40
            with open(f"/proc/{self.daemon.proc.pid}/mem", "r+b", buffering=0) as mem:
                mem.seek(plane.arena_base + lease.blocks[0].address + 777)
                mem.write(bytes([bad[777]]))
            failures = kv.stats()["checksum_failures"]
            with self.assertRaises(KvtierError) as e:
                kv.get([kg, kb])
            self.assertEqual(e.exception.code(), grpc.StatusCode.DATA_LOSS)
            self.assertIn(kb.hex(), str(e.exception))
            self.assertEqual(kv.stats()["checksum_failures"], failures + 1)
            self.assertEqual(kv.get([kg, kb]), [good, None])

    def test_errors_are_typed(self):
        with Client(self.daemon.address, "t") as kv:
            layout = kvtier.KvLayout("gqa", "fp16", layers=2, kv_heads=2, head_dim=16)
            with self.assertRaises(KvtierError) as e:
                kv.put([(b"\x02" * 16, None, b"wrong size")], layout=layout)
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
            self.assertIsInstance(e.exception, grpc.RpcError)  # what grpc users catch
            self.assertTrue(e.exception.details())
            self.assertEqual(str(e.exception), f"INVALID_ARGUMENT: {e.exception.details()}")
            with self.assertRaises(KvtierError) as e:
                kv.put([(b"\x03" * 16, b"\x03" * 16, b"its own parent")])
            self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        with self.assertRaises(ValueError):
            Client(self.daemon.address, "")

    def test_keys_and_payloads_are_checked_before_any_call(self):
        key = b"\x05" * 16
        with Client(self.daemon.address, "checks") as kv:
            before = kv.stats()
            for call in (kv.get, kv.lookup, kv.delete):
                with self.subTest(call.__name__):
                    with self.assertRaisesRegex(TypeError, r"keys\[1\]: .*, not str"):
                        call([key, key.hex()])
                    with self.assertRaisesRegex(ValueError, r"keys\[0\]: .* 16 bytes, this one 5"):
                        call([b"short"])
                    with self.assertRaisesRegex(TypeError, "not one bytes"):
                        call(key)
                    with self.assertRaisesRegex(TypeError, "not int"):
                        call(7)
            for blocks, error, pattern in [
                    ([(key.hex(), None, b"x")], TypeError, r"blocks\[0\] key"),
                    ([(key, "parent", b"x")], TypeError, r"blocks\[0\] parent"),
                    ([(key, b"short", b"x")], ValueError, r"blocks\[0\] parent"),
                    ([(key, None, "text")], TypeError, r"blocks\[0\] payload: .*not str"),
                    ([(key, None, 1000)], TypeError, r"blocks\[0\] payload: .*not int"),
                    ([(key, None)], TypeError, r"blocks\[0\]: a \(key, parent, payload\)"),
                    ((key, None, b"x"), TypeError, r"blocks\[0\]: a \(key, parent, payload\)")]:
                with self.subTest(blocks=blocks), self.assertRaisesRegex(error, pattern):
                    kv.put(blocks)
            after = kv.stats()
            self.assertEqual((after["gets"], after["lookups"], after["puts"]),
                             (before["gets"], before["lookups"], before["puts"]))

    def test_payloads_from_any_buffer(self):
        data = os.urandom(4096)
        floats = array.array("f")
        floats.frombytes(data)
        payloads = [bytearray(data), memoryview(data), floats, memoryview(data)[::2]]
        keys = [bytes([0x30 + i]) * 16 for i in range(len(payloads))]
        with Client(self.daemon.address, "buffers", chunk_bytes=1000) as kv:
            self.assertEqual(kv.put(kvtier.new_blocks(keys, payloads)).stored, 4)
            self.assertEqual(kv.get(keys), [data, data, data, data[::2]])
            self.assertEqual(kv.put([]).stored, 0)

    def test_health_and_reflection(self):
        with grpc.insecure_channel(self.daemon.address) as ch:
            # grpc.health.v1.Health/Check with an empty request: status SERVING is field 1 = 1.
            check = ch.unary_unary("/grpc.health.v1.Health/Check")
            self.assertEqual(check(b"", timeout=5), b"\x08\x01")
            # Server reflection, list_services (field 7, empty string).
            info = ch.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
            replies = b"".join(info(iter([b"\x3a\x00"]), timeout=5))
            self.assertIn(b"kvtier.v1.CacheService", replies)
            self.assertIn(b"grpc.health.v1.Health", replies)

    def test_absent_daemon_is_unavailable(self):
        with Client("127.0.0.1:1", "t", timeout=2, attempts=2) as kv:
            with self.assertRaises(KvtierError) as e:
                kv.lookup([b"\x00" * 16])
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)



class NewBlocks(unittest.TestCase):
    def test_the_triples_of_a_prompts_new_blocks(self):
        hasher = ChainHasher(KeyNamespace(b"t", "m"), 4)
        tokens = list(range(18))  # four full blocks and two tokens
        keys = hasher.keys(tokens)
        self.assertEqual(len(keys), 4)
        self.assertEqual(kvtier.new_blocks(keys, ["a", "b", "c", "d"]),
                         [(keys[0], None, "a"), (keys[1], keys[0], "b"), (keys[2], keys[1], "c"),
                          (keys[3], keys[2], "d")])
        self.assertEqual(hasher.new_blocks(tokens, ["c", "d"], cached=2),
                         [(keys[2], keys[1], "c"), (keys[3], keys[2], "d")])
        self.assertEqual(hasher.new_blocks(tokens, [], cached=4), [])
        with self.assertRaisesRegex(ValueError, "payloads: 3 given for the 2 blocks after the 2"):
            hasher.new_blocks(tokens, ["b", "c", "d"], cached=2)
        with self.assertRaisesRegex(ValueError, "cached: 5"):
            kvtier.new_blocks(keys, [], cached=5)
        with self.assertRaises(TypeError):
            kvtier.new_blocks([k.hex() for k in keys], ["a", "b", "c", "d"])


class Package(unittest.TestCase):
    def test_version_is_the_projects(self):
        with open(os.path.join(SOURCE, "CMakeLists.txt")) as f:
            want = re.search(r"project\(kvtier VERSION ([0-9.]+)", f.read()).group(1)
        self.assertEqual(kvtier.__version__, want)

    def test_every_public_method_has_a_docstring(self):
        import kvtier.aio
        classes = [kvtier.Client, kvtier.RouterClient, kvtier.WorkerClient, kvtier.aio.Client,
                   kvtier.aio.RouterClient, kvtier.aio.WorkerClient, kvtier.ChainHasher,
                   kvtier.KvLayout, kvtier.KeyNamespace, kvtier.KvtierError]
        missing = []
        for cls in classes:
            if not cls.__doc__:
                missing.append(cls.__qualname__)
            for name, member in inspect.getmembers(cls):
                if name.startswith("_") or not (callable(member) or isinstance(member, property)):
                    continue
                if not inspect.getdoc(member):
                    missing.append(f"{cls.__module__}.{cls.__qualname__}.{name}")
        for name in ("new_blocks",):
            if not inspect.getdoc(getattr(kvtier, name)):
                missing.append(f"kvtier.{name}")
        self.assertEqual(missing, [])

    def test_a_kvtier_error_is_a_grpc_error(self):
        e = KvtierError(grpc.StatusCode.NOT_FOUND, "first missing block position 3")
        self.assertIsInstance(e, grpc.RpcError)
        self.assertEqual((e.code(), e.details()), (grpc.StatusCode.NOT_FOUND,
                                                   "first missing block position 3"))
        self.assertEqual(str(e), "NOT_FOUND: first missing block position 3")


def make_certs(directory):
    """A throwaway CA and server and client certificates for 127.0.0.1 and localhost, as
    src/testing/test_certs.h makes them."""
    script = (
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        " -keyout ca.key -out ca.pem -days 2 -subj /CN=kvtier-test-ca"
        " && for who in server client; do"
        " openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        " -keyout $who.key -out $who.csr -subj /CN=$who"
        " && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > $who.ext"
        " && openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
        " -out $who.pem -days 2 -extfile $who.ext || exit 1; done")
    subprocess.run(["sh", "-c", script], cwd=directory, check=True, capture_output=True)
    return {name: os.path.join(directory, name)
            for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


class TlsDaemon(Daemon):
    """A kvtierd that requires client certificates; `certs` names the files make_certs made."""

    def __init__(self):
        self.certs_dir = tempfile.TemporaryDirectory()
        self.certs = make_certs(self.certs_dir.name)
        super().__init__("--tls-cert", self.certs["server.pem"], "--tls-key",
                         self.certs["server.key"], "--tls-client-ca", self.certs["ca.pem"])

    def close(self):
        super().close()
        self.certs_dir.cleanup()


class LiveTls(unittest.TestCase):
    """TLS options as the CLI takes them (file paths, str or os.PathLike) or as PEM bytes, on
    every client, against a kvtierd that requires client certificates."""

    @classmethod
    def setUpClass(cls):
        cls.daemon = TlsDaemon()
        cls.certs = cls.daemon.certs

    @classmethod
    def tearDownClass(cls):
        cls.daemon.close()

    def tls(self, **over):
        with open(self.certs["client.key"], "rb") as f:
            key = f.read()
        options = {"tls_ca": self.certs["ca.pem"],  # a str path, an os.PathLike, PEM bytes
                   "tls_cert": pathlib.Path(self.certs["client.pem"]), "tls_key": key}
        options.update(over)
        return options

    def test_paths_and_bytes(self):
        key = b"\x11" * 16
        with Client(self.daemon.address, "tls", **self.tls()) as kv:
            kv.put([(key, None, b"over tls")])
            self.assertEqual(kv.get([key]), [b"over tls"])
        with Client(self.daemon.address, "tls", tls_server_name="localhost", **self.tls()) as kv:
            self.assertEqual(kv.lookup([key]).matched, 1)

    def test_a_handshake_that_fails_is_unavailable(self):
        for name, options in [("no client certificate", {"tls_ca": self.certs["ca.pem"]}),
                              ("wrong name", self.tls(tls_server_name="elsewhere.example"))]:
            with self.subTest(name), Client(self.daemon.address, "tls", timeout=5, attempts=1,
                                            **options) as kv:
                with self.assertRaises(KvtierError) as e:
                    kv.lookup([b"\x11" * 16])
                self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)

    def test_router_and_worker_clients_take_the_same_options(self):
        # kvtierd serves neither service: UNIMPLEMENTED says the TLS handshake went through.
        with kvtier.RouterClient(self.daemon.address, **self.tls()) as router:
            with self.assertRaises(KvtierError) as e:
                router.members()
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        layout = KvLayout("gqa", "fp16", layers=1, kv_heads=1, head_dim=16)
        with kvtier.WorkerClient(self.daemon.address, **self.tls()) as worker:
            with self.assertRaises(KvtierError) as e:
                worker.decode("tls", layout, [kvtier.SequenceQuery(keys=[b"\x11" * 16],
                                                                   queries={0: [0.0] * 16})])
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED)

    def test_bad_options_name_the_field(self):
        for options, error, pattern in [
                ({"tls_ca": "/nonexistent/ca.pem"}, ValueError, "tls_ca: cannot read"),
                ({"tls_ca": "-----BEGIN CERTIFICATE-----"}, ValueError, "tls_ca: a str is a file"),
                ({"tls_ca": 5}, TypeError, "tls_ca"),
                (self.tls(tls_key=None), ValueError, "tls_cert and tls_key"),
                ({"tls_server_name": "x"}, ValueError, "need tls_ca")]:
            for make in (lambda: Client(self.daemon.address, "tls", **options),
                         lambda: kvtier.RouterClient(self.daemon.address, **options),
                         lambda: kvtier.WorkerClient(self.daemon.address, **options)):
                with self.subTest(options=options), self.assertRaisesRegex(error, pattern):
                    make()


class Tokens(unittest.TestCase):
    """`token` on every client: the tenant's bearer token on each call."""

    def test_cache_and_worker_clients_carry_the_token(self):
        d = tempfile.TemporaryDirectory()
        with open(os.path.join(d.name, "tokens.yaml"), "w") as f:
            f.write("alice: alice-secret-token-0001\n")
        daemon = Daemon("--auth-tokens", os.path.join(d.name, "tokens.yaml"))
        worker = start_worker(daemon)
        try:
            layout = KvLayout("gqa", "fp16", layers=1, kv_heads=1, head_dim=16)
            keys = [bytes([n]) * 16 for n in range(1, 3)]
            with Client(daemon.address, "alice", token="alice-secret-token-0001") as kv:
                kv.put(kvtier.new_blocks(keys, [b"\0" * layout.bytes_per_block] * 2),
                       layout=layout)
            with Client(daemon.address, "alice") as kv, self.assertRaises(KvtierError) as e:
                kv.lookup(keys)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            seq = kvtier.SequenceQuery(keys=keys, queries={0: [0.1] * 16})
            with kvtier.WorkerClient(worker.address, token="alice-secret-token-0001") as w:
                self.assertEqual(w.decode("alice", layout, [seq]).stats.nodes_read, 1)
            with kvtier.WorkerClient(worker.address) as w, self.assertRaises(KvtierError) as e:
                w.decode("alice", layout, [seq])
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        finally:
            worker.close()
            daemon.close()
            d.cleanup()

    def test_router_client_carries_the_token(self):
        # kvtier-router checks no tokens itself (a proxy in front of it may): a RouteService on
        # port 0 here records what arrives.
        server, seen = metadata_recording_router()
        try:
            with kvtier.RouterClient(f"127.0.0.1:{server.port}", token="tok-123") as r:
                r.members()
            with kvtier.RouterClient(f"127.0.0.1:{server.port}") as r:
                r.members()
            self.assertEqual(seen, [("Bearer tok-123",), ()])
        finally:
            server.stop(None)


def metadata_recording_router():
    """A gRPC server with a RouteService whose Members records the authorization metadata of
    each call (into the list returned) and answers with no members."""
    from concurrent import futures
    from kvtier.v1 import router_pb2, router_pb2_grpc
    seen = []

    class Recorder(router_pb2_grpc.RouteServiceServicer):
        def Members(self, request, context):
            seen.append(tuple(v for k, v in context.invocation_metadata() if k == "authorization"))
            return router_pb2.MembersResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    router_pb2_grpc.add_RouteServiceServicer_to_server(Recorder(), server)
    server.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, seen


def _attention(blocks, layout, layer, q, q_heads, context, recall=None, sink=4, window=64):
    """Decode attention over fp16 GQA blocks, the obvious way (the test's reference)."""
    d, bt, kvh_n = layout.head_dim, layout.block_tokens, layout.kv_heads
    group = q_heads // kvh_n
    values = [struct.unpack(f"<{len(b) // 2}e", b) for b in blocks]

    def elem(t, part, kvh, i):
        base = ((layer * 2 + part) * kvh_n + kvh) * bt * d
        return values[t // bt][base + (t % bt) * d + i]

    out, lse = [], []
    for h in range(q_heads):
        kvh = h // group
        local = recall is not None and kvh not in recall
        toks = [t for t in range(context)
                if not local or t < sink or t >= context - window]
        scores = [sum(q[h * d + i] * elem(t, 0, kvh, i) for i in range(d)) / math.sqrt(d)
                  for t in toks]
        m = max(scores)
        w = [math.exp(x - m) for x in scores]
        total = sum(w)
        out += [sum(w[j] * elem(t, 1, kvh, i) for j, t in enumerate(toks)) / total
                for i in range(d)]
        lse.append(m + math.log(total))
    return out, lse


class LiveWorker(unittest.TestCase):
    """kvtier-worker in front of one kvtierd."""

    def test_dense_head_sparse_pool_and_missing_blocks(self):
        daemon = Daemon()
        worker = start_worker(daemon)
        try:
            address = worker.address
            layout = KvLayout("gqa", "fp16", layers=2, kv_heads=2, head_dim=16, block_tokens=16)
            rng = random.Random(5)
            blocks = [struct.pack(f"<{layout.bytes_per_block // 2}e",
                                  *[rng.uniform(-1, 1) for _ in range(layout.bytes_per_block // 2)])
                      for _ in range(5)]
            keys = [bytes([n]) * 16 for n in range(1, 6)]
            with Client(daemon.address, tenant="py") as kv:
                kv.put([(keys[i], keys[i - 1] if i else None, blocks[i]) for i in range(5)])
            q = {layer: [rng.uniform(-1, 1) for _ in range(4 * 16)] for layer in (0, 1)}
            context = 5 * 16 - 3
            with kvtier.WorkerClient(address) as w:
                seq = kvtier.SequenceQuery(keys=keys, queries=q, context_tokens=context)
                profile = {"format": "kvtier.head_profile.v1", "layers": 2, "kv_heads": 2,
                           "sink": 4, "window": 16, "recall": [[1], []]}
                sparse = w.decode("py", layout, [seq], mode="head_sparse", profile=profile)
                dense = w.decode("py", layout, [seq])
                self.assertGreater(sparse.stats.bytes_skipped, 0)
                self.assertEqual(dense.device, "cpu")
                for layer in (0, 1):
                    for result, recall in ((dense, None), (sparse, profile["recall"][layer])):
                        want_out, want_lse = _attention(blocks, layout, layer, q[layer], 4,
                                                        context, recall=recall, window=16)
                        got = result.sequences[0][layer]
                        self.assertEqual(got.layer, layer)
                        for a, b in zip(got.out + got.lse, want_out + want_lse):
                            self.assertAlmostEqual(a, b, delta=2e-4 * (1 + abs(b)))
                again = w.decode("py", layout, [seq])
                self.assertEqual(again.stats.bytes_fetched, 0)
                self.assertEqual(again.stats.bytes_from_pool, 5 * layout.bytes_per_block)
                with self.assertRaises(KvtierError) as e:
                    w.decode("py", layout, [kvtier.SequenceQuery(
                        keys=keys + [b"\x77" * 16], queries={0: q[0]})])
                self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
                self.assertIn("first missing block position 5", e.exception.args[0])
                with self.assertRaises(ValueError):
                    w.decode("py", layout, [kvtier.SequenceQuery(queries={0: q[0]})])
        finally:
            worker.close()
            daemon.close()


if __name__ == "__main__":
    unittest.main()
