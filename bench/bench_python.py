"""bench_python: the Python client's reads of cached blocks against the C++ client's, all
measured in this run against one kvtierd on loopback:

  py ucx    kvtier.Client.get_into through kvtier._native: UCX reads of leased blocks into the
            caller's (registered) buffers, the GIL released
  py grpc   kvtier.Client(use_native=False).get: Python gRPC, each block a new bytes object
  cpp ucx   bench_client_read: the same reads (CacheClient::GetInto) in a C++ program

for 1 MiB and 4 MiB blocks, 1 and 8 readers (threads sharing one client, each reading batches of
8 blocks into buffers of its own), timed in the steady state: from 2.5 s (UCX) or 0.5 s (gRPC)
after every reader has made its first read. On a 2-core VM a new UCX connection costs about
0.3 s, 1-2 s when 8 are made at once, and 8 new connections in one Python process took another
1-3 s to reach their pace (8 Python threads on 2 cores; the GIL changes hands through the
scheduler). Each figure is the median of its turns (3 of 3 s; 1 of 1 s with --quick), the
paths taking turns.

Usage: build/bench/bench_python [--quick]     Ends with one line: RESULT {json}:
  py_ucx_get_gbps_1m, py_grpc_get_gbps_1m, cpp_ucx_get_gbps_1m (1 reader) and _8r (8 readers),
  the same for _4m, and the ratios py_ucx_vs_cpp_* and py_ucx_vs_grpc_*.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time

SIZES = {"1m": 1 << 20, "4m": 4 << 20}
READERS = (1, 8)
BATCH = 8
# Seconds of reads before the clock starts: new UCX connections take a few seconds to reach
# their pace (see the module's doc); gRPC none.
UCX_WARMUP, GRPC_WARMUP = 2.5, 0.5
TENANT = "bench"


def daemon(build, data_dir):
    """A kvtierd on a free loopback port with a 1 GiB host tier; returns (process, address)."""
    proc = subprocess.Popen(
        [os.path.join(build, "kvtierd"), "--listen", "127.0.0.1:0", "--data", data_dir,
         "--host-mib", "1024", "--nvme-gib", "1", "--max-block-mib", "4",
         "--metrics-listen", "", "--log-level", "warn"], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "listening on " in line:
            return proc, line.split("listening on ")[1].strip()
    proc.kill()
    raise SystemExit("bench_python: kvtierd did not start")


class Buffers:
    """Each reader's buffers for one client, made and registered once (as an engine registers
    its KV pool once), reused by every turn."""

    def __init__(self, client):
        self.client = client
        self.made = {}

    def of(self, reader, size):
        if (reader, size) not in self.made:
            buffers = [bytearray(size) for _ in range(BATCH)]
            for b in buffers:
                self.client.register_buffer(b)
            self.made[(reader, size)] = buffers
        return self.made[(reader, size)]


def python_reads(client, keys, size, readers, seconds, warmup, buffers=None):
    """GB/s of `readers` threads reading batches of `keys` with one client: get_into into
    buffers of their own (`buffers`, a Buffers), else get. Timed from when every reader has made
    its first read (its connection), as bench_client_read does."""
    moved, failed = [0] * readers, []
    clock = {}

    def start_clock():
        clock["start"] = time.monotonic() + warmup
        clock["end"] = clock["start"] + seconds

    warm = threading.Barrier(readers, action=start_clock)

    def read(r):
        into = buffers.of(r, size) if buffers is not None else None
        n = r * BATCH

        def batch():
            nonlocal n
            ask = [keys[(n + i) % len(keys)] for i in range(BATCH)]
            n += BATCH
            if into is not None:
                return sum(client.get_into(ask, into))
            return sum(len(b) for b in client.get(ask))

        try:
            batch()
            warm.wait()
            while time.monotonic() < clock["start"]:
                batch()
            while time.monotonic() < clock["end"]:
                moved[r] += batch()
        except Exception as e:  # reported below, after the other threads end
            failed.append(e)
            warm.abort()

    threads = [threading.Thread(target=read, args=(r,)) for r in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise SystemExit(f"bench_python: a read failed: {failed[0]!r}")
    return sum(moved) / (time.monotonic() - clock["start"]) / 1e9


def cpp_reads(build, address, keys_file, size, readers, seconds):
    run = subprocess.run(
        [os.path.join(build, "bench", "bench_client_read"), "--address", address, "--tenant",
         TENANT, "--keys-file", keys_file, "--block-bytes", str(size), "--readers",
         str(readers), "--batch", str(BATCH), "--seconds", str(seconds), "--warmup",
         str(UCX_WARMUP)],
        capture_output=True, text=True, timeout=seconds + 60)
    if run.returncode != 0:
        raise SystemExit(f"bench_python: bench_client_read failed: {run.stderr}")
    out = json.loads(run.stdout)
    if out["ucx_bytes"] == 0:
        raise SystemExit("bench_python: bench_client_read read nothing over UCX")
    return out["gbps"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one turn of 1 s a figure")
    parser.add_argument("--build-dir", required=True, help="kvtier's build folder")
    args = parser.parse_args()
    import kvtier
    from kvtier import _dataplane
    if _dataplane._native is None:
        raise SystemExit(f"bench_python: no kvtier._native ({_dataplane.NATIVE_IMPORT_ERROR}): "
                         "scripts/build.sh --target kvtier_python")
    turns, seconds = (1, 1.0) if args.quick else (3, 3.0)
    # Blocks enough that 8 readers' batches differ: 128 MiB of 1 MiB blocks, 256 MiB of 4 MiB.
    counts = {"1m": 128, "4m": 64}
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc, address = daemon(args.build_dir, os.path.join(tmp, "data"))
        try:
            native = kvtier.Client(address, TENANT)
            buffers = Buffers(native)
            plain = kvtier.Client(address, TENANT, use_native=False)
            for name, size in SIZES.items():
                keys = [os.urandom(16) for _ in range(counts[name])]
                for i in range(0, len(keys), 16):
                    native.put([(k, None, os.urandom(size)) for k in keys[i:i + 16]])
                keys_file = os.path.join(tmp, f"keys-{name}")
                with open(keys_file, "w") as f:
                    f.write("".join(k.hex() + "\n" for k in keys))
                for readers in READERS:
                    runs = {"py_ucx": [], "py_grpc": [], "cpp_ucx": []}
                    for _ in range(turns):
                        runs["py_ucx"].append(python_reads(native, keys, size, readers, seconds,
                                                           UCX_WARMUP, buffers))
                        runs["py_grpc"].append(python_reads(plain, keys, size, readers, seconds,
                                                            GRPC_WARMUP))
                        runs["cpp_ucx"].append(cpp_reads(args.build_dir, address, keys_file,
                                                         size, readers, seconds))
                    suffix = name if readers == 1 else f"{name}_{readers}r"
                    for path, values in runs.items():
                        result[f"{path}_get_gbps_{suffix}"] = statistics.median(values)
                        print(f"{path:8} {name} blocks, {readers} reader(s): " +
                              " ".join(f"{v:.2f}" for v in values) + " GB/s", flush=True)
                    py = result[f"py_ucx_get_gbps_{suffix}"]
                    result[f"py_ucx_vs_cpp_{suffix}"] = py / result[f"cpp_ucx_get_gbps_{suffix}"]
                    result[f"py_ucx_vs_grpc_{suffix}"] = py / result[f"py_grpc_get_gbps_{suffix}"]
            stats = native.transfer_stats()
            if stats["ucx_bytes"] == 0 or stats["ucx_fallbacks"]:
                raise SystemExit(f"bench_python: the native client did not read over UCX: {stats}")
            native.close()
            plain.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result = {k: round(v, 4) for k, v in result.items()}
    result["cpu"] = platform.processor() or platform.machine()
    result["cores"] = os.cpu_count()
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
