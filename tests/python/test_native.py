"""Reads into caller memory (get_into, read_ranges), puts from it, and leases, through
kvtier._native (the C++ client: UCX, gRPC where the daemon offers no data plane) and without it
(Python gRPC), against real kvtierd processes: the same bytes, the same answers and the same
errors every way.

Run by ctest as: /usr/bin/python3 -m unittest (PYTHONPATH=build/python, KVTIER_BINARY_DIR and
KVTIER_SOURCE_DIR set). numpy (Debian's python3-numpy) is used where present; torch only where
it is installed.
"""
import asyncio
import threading
import time
import unittest

import grpc

import kvtier
import kvtier.aio
from kvtier import Client, KvtierError
from kvtier import _dataplane
from test_client import Daemon

try:
    import numpy
except ImportError:
    numpy = None
try:
    import torch
except ImportError:
    torch = None

BLOCK = 256 << 10
KEYS = [bytes([i]) * 16 for i in range(1, 9)]
MISSING = b"\xee" * 16


def payload(i, size=BLOCK):
    """Block i's bytes: not one repeated value, so that offsets matter."""
    return bytes((i * 7 + j) & 0xFF for j in range(256)) * (size // 256)


class DlpackOnly:
    """An object that offers its memory through DLPack alone, as a torch tensor does."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, stream=None):
        return self.array.__dlpack__()

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


class Paths:
    """One client per way bytes can reach Python: the native client over UCX, the native client
    over gRPC (a daemon without a data plane), and Python gRPC."""

    @classmethod
    def setUpClass(cls):
        if _dataplane._native is None:
            raise unittest.SkipTest(f"no kvtier._native: {_dataplane.NATIVE_IMPORT_ERROR}")
        cls.ucx_daemon = Daemon()
        cls.grpc_daemon = Daemon("--ucx-listen", "off")
        for address in (cls.ucx_daemon.address, cls.grpc_daemon.address):
            with Client(address, "native", use_native=False) as kv:
                kv.put([(k, None, payload(i)) for i, k in enumerate(KEYS)])

    @classmethod
    def tearDownClass(cls):
        cls.ucx_daemon.close()
        cls.grpc_daemon.close()

    def clients(self):
        """(name, client) for each path; the caller closes them."""
        return [("native ucx", Client(self.ucx_daemon.address, "native")),
                ("native grpc", Client(self.grpc_daemon.address, "native")),
                ("python grpc", Client(self.ucx_daemon.address, "native", use_native=False))]


class NativeReads(Paths, unittest.TestCase):
    def test_get_into_every_kind_of_buffer_every_path(self):
        for name, kv in self.clients():
            with self.subTest(name), kv:
                self.assertEqual(kv.native, name != "python grpc")
                buffers = [bytearray(BLOCK) for _ in KEYS]
                self.assertEqual(kv.get_into(KEYS, buffers), [BLOCK] * len(KEYS))
                self.assertEqual([bytes(b) for b in buffers],
                                 [payload(i) for i in range(len(KEYS))])
                # A slice of a larger buffer, a bigger buffer (the rest untouched), a miss.
                big = bytearray(b"\xaa" * (3 * BLOCK))
                sizes = kv.get_into([KEYS[1], KEYS[2], MISSING],
                                    [memoryview(big)[BLOCK:2 * BLOCK],
                                     memoryview(big)[2 * BLOCK:], bytearray(BLOCK)])
                self.assertEqual(sizes, [BLOCK, BLOCK, None])
                self.assertEqual(big[:BLOCK], b"\xaa" * BLOCK)
                self.assertEqual(big[BLOCK:2 * BLOCK], payload(1))
                if numpy is not None:
                    rows = numpy.zeros((len(KEYS), BLOCK // 4), dtype=numpy.float32)
                    self.assertEqual(kv.get_into(KEYS, list(rows)), [BLOCK] * len(KEYS))
                    self.assertEqual(rows[3].tobytes(), payload(3))
                    if kv.native:  # DLPack: the native path only
                        target = numpy.zeros(BLOCK, dtype=numpy.uint8)
                        self.assertEqual(kv.get_into([KEYS[4]], [DlpackOnly(target)]), [BLOCK])
                        self.assertEqual(target.tobytes(), payload(4))
                stats = kv.transfer_stats()
                if name == "native ucx":  # the call with a miss went to gRPC
                    self.assertGreaterEqual(stats["ucx_bytes"], len(KEYS) * BLOCK)
                elif name == "native grpc":
                    self.assertEqual(stats["ucx_bytes"], 0)
                    self.assertGreater(stats["grpc_bytes"], 0)

    @unittest.skipIf(torch is None, "torch is not installed")
    def test_torch_tensors(self):
        with Client(self.ucx_daemon.address, "native") as kv:
            tensor = torch.zeros(BLOCK, dtype=torch.uint8)
            self.assertEqual(kv.get_into([KEYS[5]], [tensor]), [BLOCK])
            self.assertEqual(bytes(tensor.numpy()), payload(5))

    def test_read_ranges_every_path(self):
        for name, kv in self.clients():
            with self.subTest(name), kv:
                heads = [bytearray(1000), bytearray(4096), bytearray(1)]
                over_ucx = kv.read_ranges([(KEYS[0], 12345, heads[0]), (KEYS[6], 0, heads[1]),
                                           (KEYS[0], BLOCK - 1, heads[2])])
                self.assertEqual(over_ucx, name == "native ucx")
                self.assertEqual(bytes(heads[0]), payload(0)[12345:13345])
                self.assertEqual(bytes(heads[1]), payload(6)[:4096])
                self.assertEqual(bytes(heads[2]), payload(0)[-1:])

    def test_the_same_errors_every_path(self):
        seen = {}
        for name, kv in self.clients():
            with self.subTest(name), kv:
                answers = []
                calls = [
                    lambda: kv.get_into([KEYS[0]], [bytearray(BLOCK - 1)]),
                    lambda: kv.read_ranges([(MISSING, 0, bytearray(8))]),
                    lambda: kv.read_ranges([(KEYS[0], BLOCK - 4, bytearray(8))]),
                ]
                for call in calls:
                    with self.assertRaises(KvtierError) as e:
                        call()
                    self.assertIsInstance(e.exception, grpc.RpcError)
                    answers.append((e.exception.code(), e.exception.details()))
                seen[name] = answers
                with self.assertRaisesRegex(TypeError, "read-only"):
                    kv.get_into([KEYS[0]], [bytes(BLOCK)])
                with self.assertRaises(TypeError):
                    kv.get_into(["k" * 16], [bytearray(BLOCK)])
                with self.assertRaisesRegex(ValueError, "1 keys, 2 buffers"):
                    kv.get_into([KEYS[0]], [bytearray(BLOCK), bytearray(BLOCK)])
                with self.assertRaisesRegex(ValueError, "offset"):
                    kv.read_ranges([(KEYS[0], -1, bytearray(8))])
                if numpy is not None:
                    strided = numpy.zeros((BLOCK, 2), dtype=numpy.uint8)[:, 0]
                    with self.assertRaisesRegex(ValueError, "contiguous"):
                        kv.get_into([KEYS[0]], [strided])
        self.assertEqual(seen["native ucx"][0][0], grpc.StatusCode.OUT_OF_RANGE)
        self.assertEqual(seen["native ucx"][1][0], grpc.StatusCode.NOT_FOUND)
        self.assertEqual(seen["native ucx"][2][0], grpc.StatusCode.OUT_OF_RANGE)
        self.assertEqual(seen["native ucx"], seen["native grpc"])
        self.assertEqual(seen["native ucx"], seen["python grpc"])

    def test_readers_in_threads_overlap_and_release_the_gil(self):
        with Client(self.ucx_daemon.address, "native") as kv:
            wrong, stop = [], threading.Event()

            def read(n):
                buffers = [bytearray(BLOCK) for _ in KEYS]
                for _ in range(n):
                    kv.get_into(KEYS, buffers)
                    if [bytes(b) for b in buffers] != [payload(i) for i in range(len(KEYS))]:
                        wrong.append(threading.get_ident())

            threads = [threading.Thread(target=read, args=(20,)) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            self.assertFalse(any(t.is_alive() for t in threads))
            self.assertEqual(wrong, [])
            self.assertGreaterEqual(kv.transfer_stats()["ucx_connects"], 2)

            # While one call moves 64 MiB, a pure-Python thread keeps counting: the GIL is free.
            counted = [0]

            def count():
                while not stop.is_set():
                    counted[0] += 1

            buffers = [bytearray(BLOCK) for _ in range(256)]
            counter = threading.Thread(target=count)
            counter.start()
            time.sleep(0.05)
            before, start = counted[0], time.monotonic()
            for _ in range(4):
                kv.get_into(KEYS * 32, buffers)
            during, elapsed = counted[0] - before, time.monotonic() - start
            stop.set()
            counter.join()
            # A held GIL would let the counter run only between the calls.
            self.assertGreater(during, 1000, f"{during} counts in {elapsed:.3f} s of reads")

    def test_calls_after_close_fail(self):
        kv = Client(self.ucx_daemon.address, "native")
        buffer = bytearray(BLOCK)
        kv.register_buffer(buffer)
        self.assertEqual(kv.get_into([KEYS[0]], [buffer]), [BLOCK])
        kv.close()
        with self.assertRaises(KvtierError) as e:
            kv.get_into([KEYS[0]], [buffer])
        self.assertEqual(e.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)


class NativePutsAndLeases(Paths, unittest.TestCase):
    def test_put_from_buffers_every_path(self):
        for n, (name, kv) in enumerate(self.clients()):
            with self.subTest(name), kv:
                key, parent = bytes([0x40 + n]) * 16, bytes([0x50 + n]) * 16
                data = bytearray(payload(9 + n))
                view = memoryview(data)[:BLOCK // 2]
                blocks = [(parent, None, data), (key, parent, view)]
                if numpy is not None:
                    blocks.append((bytes([0x60 + n]) * 16, key,
                                   numpy.frombuffer(payload(n), dtype=numpy.uint16)))
                res = kv.put(blocks, layout=None)
                self.assertEqual((res.stored, res.present), (len(blocks), 0))
                self.assertEqual(kv.put(blocks).present, len(blocks))
                got = kv.get([b[0] for b in blocks])
                self.assertEqual(got[0], bytes(data))
                self.assertEqual(got[1], bytes(view))
                if numpy is not None:
                    self.assertEqual(got[2], payload(n))
                with self.assertRaises(KvtierError) as e:
                    kv.put([(b"\x77" * 16, None, b"x" * 100)], layout=kvtier.LLAMA3_8B)
                self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

    def test_a_lease_pins_and_is_released_once(self):
        for name, kv in self.clients():
            with self.subTest(name), kv:
                lease = kv.lease(KEYS[:3], ttl_ms=5000)
                self.assertEqual([b.key for b in lease.blocks], KEYS[:3])
                self.assertEqual({b.tier for b in lease.blocks}, {"host"})
                self.assertEqual({b.size for b in lease.blocks}, {BLOCK})
                self.assertGreater(lease.expires, time.monotonic())
                self.assertTrue(kv.release(lease, bytes_read=BLOCK))
                self.assertFalse(kv.release(lease))
                with self.assertRaises(KvtierError) as e:
                    kv.lease([MISSING])
                self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)


class NativeAio(Paths, unittest.IsolatedAsyncioTestCase):
    async def test_get_into_read_ranges_put_lease(self):
        for address, use_native in ((self.ucx_daemon.address, True),
                                    (self.ucx_daemon.address, False),
                                    (self.grpc_daemon.address, True)):
            with self.subTest(address=address, use_native=use_native):
                async with kvtier.aio.Client(address, "native", use_native=use_native) as kv:
                    self.assertEqual(kv.native, use_native)
                    buffers = [bytearray(BLOCK) for _ in KEYS]
                    got = await asyncio.gather(kv.get_into(KEYS[:4], buffers[:4]),
                                               kv.get_into(KEYS[4:], buffers[4:]))
                    self.assertEqual(got, [[BLOCK] * 4, [BLOCK] * 4])
                    self.assertEqual([bytes(b) for b in buffers],
                                     [payload(i) for i in range(len(KEYS))])
                    part = bytearray(100)
                    await kv.read_ranges([(KEYS[2], 7, part)])
                    self.assertEqual(bytes(part), payload(2)[7:107])
                    key = bytes([0x70 + use_native]) * 16
                    self.assertEqual((await kv.put([(key, None, memoryview(part))])).stored, 1)
                    lease = await kv.lease([key])
                    self.assertTrue(await kv.release(lease))
                    with self.assertRaises(KvtierError) as e:
                        await kv.get_into([KEYS[0]], [bytearray(1)])
                    self.assertEqual(e.exception.code(), grpc.StatusCode.OUT_OF_RANGE)


if __name__ == "__main__":
    unittest.main()
