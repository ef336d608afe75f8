"""vLLM's KV-event protocol, written here from the format alone (Debian's python3-zmq and
python3-msgpack), against kvtier's C++ side:

- an independent publisher (PUB + ROUTER replay) drives the C++ subscriber and mapper
  (build/kv_events_follow): chain keys, gaps filled by replay, out-of-order and duplicate
  sequence numbers, a malformed batch, an engine restart;
- an independent subscriber reads a real kvtierd's events (--kv-events-endpoint) while the
  Python client puts and deletes blocks;
- kvtier-router follows two such engines (--engine-events, --no-daemons) and routes a prompt to
  the engine that reported its blocks, forgets them on AllBlocksCleared, and counts a malformed
  batch.

Run by ctest as /usr/bin/python3 -m unittest (PYTHONPATH=build/python, KVTIER_BINARY_DIR and
KVTIER_SOURCE_DIR set). Loopback only; every wait is bounded.
"""
import os
import struct
import subprocess
import tempfile
import threading
import time
import unittest

import msgpack
import xxhash
import zmq

import kvtier
from kvtier import ChainHasher, Client, KeyNamespace

SOURCE = os.environ.get("KVTIER_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
BINARY = os.environ.get("KVTIER_BINARY_DIR", os.path.join(SOURCE, "build"))
MODEL = "llama-test"
FINGERPRINT = 0xABCDEF
END_SEQ = (-1).to_bytes(8, "big", signed=True)


def seq_bytes(seq):
    return seq.to_bytes(8, "big", signed=True)


def batch(events, ts=None):
    return msgpack.packb([time.time() if ts is None else ts, events], use_bin_type=True)


def stored(hashes, parent, tokens, block_size, lora_name=None, extra_keys=None):
    e = ["BlockStored", hashes, parent, tokens, block_size, None, "GPU", lora_name]
    if extra_keys is not None:
        e.append(extra_keys)
    return e


def kvtier_keys(tokens, block_size, adapter="", salt=b""):
    ns = KeyNamespace(salt, MODEL, FINGERPRINT, adapter)
    return [k.hex() for k in ChainHasher(ns, block_size).keys(tokens)]


class Engine:
    """A publisher as vLLM's ZmqEventPublisher behaves: PUB [topic, seq, payload], ROUTER replay
    answering [seq, payload] per kept batch from the asked one, then [-1, b""]."""

    def __init__(self, ctx, tmp):
        self.pub = ctx.socket(zmq.PUB)
        self.pub.bind(f"ipc://{tmp}/pub")
        self.replay = ctx.socket(zmq.ROUTER)
        self.replay.bind(f"ipc://{tmp}/replay")
        self.endpoint, self.replay_endpoint = f"ipc://{tmp}/pub", f"ipc://{tmp}/replay"
        self.kept = {}  # seq -> payload, what replay serves
        self.replays = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._lock = threading.Lock()
        self._thread.start()

    def send(self, seq, payload, keep=True, deliver=True):
        with self._lock:
            if keep:
                self.kept[seq] = payload
        if deliver:
            self.pub.send_multipart([b"", seq_bytes(seq), payload])

    def _serve(self):
        poller = zmq.Poller()
        poller.register(self.replay, zmq.POLLIN)
        while not self._stop:
            if not poller.poll(50):
                continue
            ident, empty, start = self.replay.recv_multipart()
            start = int.from_bytes(start, "big", signed=True)
            self.replays.append(start)
            with self._lock:
                kept = sorted(self.kept.items())
            for seq, payload in kept:
                if seq >= start:
                    self.replay.send_multipart([ident, empty, seq_bytes(seq), payload])
            self.replay.send_multipart([ident, empty, END_SEQ, b""])

    def close(self):
        self._stop = True
        self._thread.join(5)
        self.pub.close(0)
        self.replay.close(0)


class Follower:
    """build/kv_events_follow: the C++ subscriber and mapper, printing what they do."""

    def __init__(self, engine):
        self.proc = subprocess.Popen(
            [os.path.join(BINARY, "tests", "kv_events_follow"), engine.endpoint, engine.replay_endpoint,
             MODEL, "%x" % FINGERPRINT],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines = []
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(lambda l: l == "ready")

    def _read(self):
        for line in self.proc.stdout:
            with self._cv:
                self.lines.append(line.strip())
                self._cv.notify_all()

    def wait_for(self, pred, timeout=10):
        deadline = time.monotonic() + timeout
        with self._cv:
            while not any(pred(l) for l in self.lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; follower said {self.lines}")
                self._cv.wait(left)

    def finish(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)
        counters = [l for l in self.lines if l.startswith("counters ")]
        assert counters, self.lines
        return dict(kv.split("=") for kv in counters[-1].split()[1:])

    def said(self, prefix):
        with self._cv:
            return [l[len(prefix):] for l in self.lines if l.startswith(prefix)]


class CppSubscriberAgainstPythonPublisher(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.ctx = zmq.Context()
        self.engine = Engine(self.ctx, self.tmp.name)
        self.follower = Follower(self.engine)
        # A SUB socket sees nothing sent before it joined: send batch 0 (clearing) until it
        # arrives; the copies after the first are duplicates.
        self.probes = 0
        for _ in range(200):
            self.engine.send(0, batch([["AllBlocksCleared"]]))
            self.probes += 1
            try:
                self.follower.wait_for(lambda l: l == "batch 0", timeout=0.05)
                break
            except AssertionError:
                pass
        self.follower.wait_for(lambda l: l == "batch 0")

    def tearDown(self):
        if self.follower.proc.poll() is None:
            self.follower.proc.kill()
            self.follower.proc.wait()
        self.engine.close()
        self.ctx.term()
        self.tmp.cleanup()

    def test_keys_gaps_replay_order_malformed_restart(self):
        e, f = self.engine, self.follower
        tokens = list(range(1, 13))
        # Blocks 0-1 of a salted prompt under a LoRA adapter, then block 2 as a child.
        e.send(1, batch([stored([101, 102], None, tokens[:8], 4, "sql-lora",
                                [["sql-lora", "salt-1"], ["sql-lora"]])]))
        e.send(2, batch([stored([b"\x03" * 32], 102, tokens[8:], 4, "sql-lora",
                                [["sql-lora"]])]))
        want = kvtier_keys(tokens, 4, "sql-lora", b"salt-1")
        f.wait_for(lambda l: l == "stored " + want[2])  # a batch's line comes before its keys'
        self.assertEqual(",".join(f.said("stored ")), ",".join(want[:2]) + "," + want[2])

        # Batches 3 and 4 never reach the subscriber; 5 does: replay must fill 3 and 4.
        e.send(3, batch([["BlockRemoved", [b"\x03" * 32], "GPU"]]), deliver=False)
        e.send(4, batch([stored([201], None, [7, 7, 7, 7], 4)]), deliver=False)
        e.send(5, batch([stored([202], 201, [8, 8, 8, 8], 4)]))
        f.wait_for(lambda l: l == "stored " + kvtier_keys([7] * 4 + [8] * 4, 4)[1])
        self.assertIn(3, e.replays)
        self.assertEqual(f.said("removed "), [want[2]])
        self.assertEqual(f.said("stored ")[-2:], kvtier_keys([7] * 4 + [8] * 4, 4))

        # Out of order: 7 before 6 (replay serves 6), then 6 arrives late and is dropped; 7
        # again is a duplicate.
        e.send(6, batch([["BlockRemoved", [202], "GPU"]]), deliver=False)
        e.send(7, batch([["BlockRemoved", [201], "GPU"]]))
        f.wait_for(lambda l: l == "removed " + kvtier_keys([7] * 4, 4)[0])
        e.send(6, batch([["BlockRemoved", [202], "GPU"]]))
        e.send(7, batch([["BlockRemoved", [201], "GPU"]]))
        # A malformed batch is skipped and counted; the next one still arrives.
        e.send(8, b"\xc1 not msgpack")
        e.send(9, batch([stored([301], None, [1, 1, 1, 1], 4)]))
        f.wait_for(lambda l: l == "stored " + kvtier_keys([1] * 4, 4)[0])
        self.assertEqual(f.said("batch ").count("6"), 1)
        self.assertEqual(f.said("removed ")[-2:], kvtier_keys([7] * 4 + [8] * 4, 4)[::-1])

        # A gap that replay cannot fill (the engine no longer keeps it): lost, the map clears.
        e.send(10, b"", keep=False, deliver=False)
        e.send(11, batch([stored([302], 301, [2, 2, 2, 2], 4)]))
        f.wait_for(lambda l: l == "batch 11")
        self.assertIn("10", f.said("lost "))

        # The engine restarts: numbering begins at 0 again, with AllBlocksCleared.
        cleared = len([l for l in f.lines if l == "cleared"])
        e.kept.clear()
        e.send(0, batch([["AllBlocksCleared"]]))
        e.send(1, batch([stored([401], None, [5, 5, 5, 5], 4)]))
        f.wait_for(lambda l: l == "stored " + kvtier_keys([5] * 4, 4)[0])
        self.assertGreaterEqual(len([l for l in f.lines if l == "cleared"]), cleared + 2)

        c = f.finish()
        self.assertEqual(c["malformed"], "1")
        self.assertEqual(c["restarts"], "1")
        self.assertGreaterEqual(int(c["replayed"]), 3)  # 3, 4 and 6
        self.assertGreaterEqual(int(c["duplicates"]), 2)  # late 6, second 7 (and extra probes)
        self.assertEqual(c["gaps"], "3")
        self.assertEqual(c["unknown_parent"], "1")  # 302's parent went with the loss


class Goldens(unittest.TestCase):
    def test_checked_in_goldens_are_what_the_generator_writes(self):
        import importlib.util
        data = os.path.join(SOURCE, "tests", "data", "kv_events")
        spec = importlib.util.spec_from_file_location("gen_golden",
                                                      os.path.join(data, "gen_golden.py"))
        gen = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gen)
        for name, obj in gen.GOLDEN.items():
            with open(os.path.join(data, name), "rb") as f:
                self.assertEqual(f.read(), gen.pack(obj), name)


def addresses_said(proc):
    """What a starting binary says it serves where ("kvtierd listening" -> HOST:PORT), up to
    its listening line."""
    said = {}
    for _ in range(10):
        line = proc.stdout.readline()
        if " on " in line:
            what, where = line.split(" on ", 1)
            said[what] = where.strip()
        if "listening on " in line:
            break
    return said


def tenant_key(tenant, key):
    t = tenant.encode()
    data = b"KVTIER/TENANT/1" + struct.pack("<I", len(t)) + t + key
    return xxhash.xxh3_128_digest(data, seed=0x4B56544945523031)


class PythonSubscriberAgainstKvtierd(unittest.TestCase):
    def test_puts_and_deletes_are_published(self):
        tmp = tempfile.TemporaryDirectory()
        ctx = zmq.Context()
        proc = subprocess.Popen(
            [os.path.join(BINARY, "kvtierd"), "--listen", "127.0.0.1:0", "--data",
             os.path.join(tmp.name, "data"), "--host-mib", "64", "--nvme-gib", "1",
             "--metrics-listen", "", "--log-level", "warn",
             "--kv-events-endpoint", "tcp://127.0.0.1:0",
             "--kv-events-replay-endpoint", f"ipc://{tmp.name}/replay"],
            stdout=subprocess.PIPE, text=True)
        try:
            said = addresses_said(proc)
            self.assertIn("kvtierd kv-events", said, said)
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(said["kvtierd kv-events"])
            replay = ctx.socket(zmq.DEALER)
            replay.connect(said["kvtierd kv-events-replay"])
            layout = kvtier.KvLayout("gqa", "fp16", layers=1, kv_heads=1, head_dim=16,
                                     block_tokens=16)
            keys = ChainHasher(KeyNamespace(b"", "m", layout.fingerprint()), 16).keys(
                list(range(48)))
            blocks = [(keys[i], keys[i - 1] if i else None, bytes([i]) * layout.bytes_per_block)
                      for i in range(3)]
            time.sleep(0.3)  # the SUB socket joins; what it missed comes from replay below
            with Client(said["kvtierd listening"], "events-tenant") as kv:
                self.assertEqual(kv.put(blocks, layout=layout).stored, 3)
                self.assertEqual(kv.delete(keys[2:]), 1)
            store_keys = [tenant_key("events-tenant", k) for k in keys]

            events, seqs = [], []
            deadline = time.monotonic() + 10
            while len([e for e in events if e[0] != "AllBlocksCleared"]) < 4:
                self.assertLess(time.monotonic(), deadline, events)
                if sub.poll(100):
                    topic, seq, payload = sub.recv_multipart()
                    seqs.append(int.from_bytes(seq, "big", signed=True))
                    ts, evs, *_ = msgpack.unpackb(payload, raw=False)
                    events += evs
            # Replay from 0 gives every batch, the first of them AllBlocksCleared.
            replay.send_multipart([b"", seq_bytes(0)])
            replayed = []
            while True:
                self.assertTrue(replay.poll(5000))
                frames = replay.recv_multipart()
                self.assertEqual(frames[0], b"")
                if frames[1] == END_SEQ:
                    break
                replayed.append(int.from_bytes(frames[1], "big"))
                replay_events = msgpack.unpackb(frames[2], raw=False)[1]
                if replayed == [0]:
                    self.assertEqual(replay_events[0], ["AllBlocksCleared"])
            self.assertEqual(replayed, list(range(replayed[-1] + 1)))
            self.assertEqual(seqs, list(range(seqs[0], seqs[0] + len(seqs))))

            evs = [e for e in events if e[0] != "AllBlocksCleared"]
            for i, e in enumerate(evs[:3]):
                self.assertEqual(e[0], "BlockStored")
                self.assertEqual(e[1], [store_keys[i]])
                self.assertEqual(e[2], store_keys[i - 1] if i else None)
                self.assertEqual((e[3], e[4], e[6]), ([], 0, "CPU"))
            self.assertEqual(evs[3], ["BlockRemoved", [store_keys[2]], "CPU"])
            sub.close(0)
            replay.close(0)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            ctx.term()
            tmp.cleanup()


class RouterFollowsEngines(unittest.TestCase):
    def test_routes_to_the_engine_holding_the_prompt(self):
        import urllib.request
        from kvtier import RouterClient
        tmp = tempfile.TemporaryDirectory()
        ctx = zmq.Context()
        engines = {}
        args = [os.path.join(BINARY, "kvtier-router"), "--nodes", "127.0.0.1:1,127.0.0.1:2",
                "--no-daemons", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                "--probe-interval-ms", "100", "--engine-model", MODEL,
                "--engine-layout-fingerprint", str(FINGERPRINT), "--log-level", "warn"]
        for node in ("127.0.0.1:1", "127.0.0.1:2"):
            d = os.path.join(tmp.name, node.replace(":", "_"))
            os.mkdir(d)
            engines[node] = Engine(ctx, d)
            args += ["--engine-events",
                     f"{node}={engines[node].endpoint}+{engines[node].replay_endpoint}"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        try:
            said = addresses_said(proc)
            self.assertIn("kvtier-router listening", said, said)
            bs = 16
            tokens = list(range(1000, 1000 + 4 * bs + 3))
            with RouterClient(said["kvtier-router listening"]) as router:
                def route():
                    return router.route("any-tenant", tokens=tokens, model=MODEL,
                                        block_tokens=bs, layout_fingerprint=FINGERPRINT)
                first = route()
                self.assertEqual(first.expected_cached_blocks, 0)
                # The engine the router would not choose reports the prompt's four blocks.
                holder = first.nodes[1]
                engine = engines[holder]
                time.sleep(0.3)  # the router's SUB sockets join; earlier batches come by replay
                engine.send(0, batch([["AllBlocksCleared"]]))
                engine.send(1, batch([stored([11, 12, 13, 14], None, tokens[:4 * bs], bs)]))

                def wait_route(pred):
                    deadline = time.monotonic() + 10
                    while True:
                        r = route()
                        if pred(r) or time.monotonic() > deadline:
                            return r
                        time.sleep(0.05)

                r = wait_route(lambda r: r.expected_cached_blocks == 4)
                self.assertEqual(r.expected_cached_blocks, 4)
                self.assertEqual(r.nodes[0], holder)
                # Another model's prompt does not match the engines' blocks.
                other = router.route("any-tenant", tokens=tokens, model="another-model",
                                     block_tokens=bs)
                self.assertEqual(other.expected_cached_blocks, 0)
                # A malformed batch is skipped; a removal and a restart are followed.
                engine.send(2, b"\xc1 not msgpack")
                engine.send(3, batch([["BlockRemoved", [13, 14], "GPU"]]))
                r = wait_route(lambda r: r.expected_cached_blocks == 2)
                self.assertEqual(r.expected_cached_blocks, 2)
                engine.send(4, batch([["AllBlocksCleared"]]))
                r = wait_route(lambda r: r.expected_cached_blocks == 0)
                self.assertEqual(r.expected_cached_blocks, 0)
                time.sleep(0.3)  # a probe round moves the counters into /metrics
                metrics = urllib.request.urlopen(
                    f"http://{said['kvtier-router metrics']}/metrics", timeout=5).read().decode()
                self.assertIn('kvtier_router_engine_batches_total{outcome="malformed"} 1', metrics)
                self.assertIn('kvtier_router_engine_batches_total{outcome="indexed"} 4', metrics)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            for e in engines.values():
                e.close()
            ctx.term()
            tmp.cleanup()


if __name__ == "__main__":
    unittest.main()
