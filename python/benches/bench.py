"""Speed of taskit_native against the Rust frontend and TaskIt 4.0's
original client, in one run against one host.

    cargo build --release -p taskit-host -p taskit --bins
    cargo build --release -p taskit-demo
    python3 -m venv /tmp/bench && /tmp/bench/bin/pip install ./python taskit==4.0.0
    /tmp/bench/bin/python python/benches/bench.py

Waited add(4, 4): medians of interleaved rounds (Rust frontend through
taskit-bench --host, taskit_native's work, the original client's work).
Throughput: add(i, 1) with many calls in flight, four ways.
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from taskit_native import FrontEnd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_host(binary, plugin, isolation):
    plugins = tempfile.mkdtemp(prefix="taskit-pybench-")
    shutil.copy(plugin, plugins)
    proc = subprocess.Popen(
        [binary, "--plugins", plugins, "--bind", "127.0.0.1:0", "--no-admin-token",
         "--isolation", isolation],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        m = re.search(r"taskit-host ready listening=(\S+):(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, (m.group(1), int(m.group(2)))
    raise SystemExit("the host did not start")


def median_us(samples):
    return statistics.median(samples) * 1e6


def waited_native(fe, calls):
    for _ in range(calls // 10):
        fe.work("add", 4, 4)
    samples = []
    for _ in range(calls):
        t = time.perf_counter()
        fe.work("add", 4, 4)
        samples.append(time.perf_counter() - t)
    return median_us(samples)


def waited_original(addr, calls):
    from taskit.frontend import FrontEnd as Original

    fe = Original([addr])
    for _ in range(calls // 10):
        fe.work("add", 4, 4)
    samples = []
    for _ in range(calls):
        t = time.perf_counter()
        assert fe.work("add", 4, 4) == 8
        samples.append(time.perf_counter() - t)
    return median_us(samples)


def waited_rust(bench, addr, calls):
    out = subprocess.run(
        [bench, "--host", "%s:%d" % addr, "--calls", str(calls), "--in-flight", "1",
         "--seconds", "0.2", "--reloads", "0", "--isolation", "none",
         "--plots", tempfile.mkdtemp(prefix="taskit-pybench-plots-")],
        capture_output=True, text=True, check=True).stdout
    figures = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
    return figures["native_json_latency"]["median_us"]


def asyncio_tasks(fe, in_flight, seconds):
    async def main():
        deadline = time.perf_counter() + seconds
        count = 0

        async def worker(i):
            nonlocal count
            while time.perf_counter() < deadline:
                assert await fe.call("add", i, 1) == i + 1
                count += 1

        t = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(in_flight)))
        return count / (time.perf_counter() - t)

    return asyncio.run(main())


def asyncio_gather(fe, batch, seconds):
    async def main():
        t = time.perf_counter()
        count = 0
        while time.perf_counter() - t < seconds:
            results = await asyncio.gather(*(fe.call("add", i, 1) for i in range(batch)))
            assert results[-1] == batch
            count += batch
        return count / (time.perf_counter() - t)

    return asyncio.run(main())


def threads(fe, n, seconds):
    deadline = time.perf_counter() + seconds
    counts = [0] * n

    def worker(k):
        while time.perf_counter() < deadline:
            assert fe.work("add", k, 1) == k + 1
            counts[k] += 1

    t = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(n)]
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    return sum(counts) / (time.perf_counter() - t)


def starmap(fe, calls):
    items = [(i, 1) for i in range(calls)]
    t = time.perf_counter()
    results = fe.starmap("add", items)
    assert results[-1] == calls
    return calls / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    release = os.path.join(ROOT, "target", "release")
    p.add_argument("--host-bin", default=os.path.join(release, "taskit-host"))
    p.add_argument("--plugin", default=os.path.join(release, "libtaskit_demo.so"))
    p.add_argument("--taskit-bench", default=os.path.join(release, "taskit-bench"))
    p.add_argument("--isolation", default="process")
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()

    proc, addr = start_host(args.host_bin, args.plugin, args.isolation)
    try:
        fe = FrontEnd([addr])
        try:
            import taskit.frontend  # noqa: F401
            original = True
        except ImportError:
            original = False
            print("(taskit==4.0.0 is not installed: the original client is skipped)")
        rust, native, orig = [], [], []
        for _ in range(args.rounds):
            rust.append(waited_rust(args.taskit_bench, addr, args.calls))
            native.append(waited_native(fe, args.calls))
            if original:
                orig.append(waited_original(addr, args.calls // 4))
        figures = {
            "isolation": args.isolation,
            "waited_rust_us": statistics.median(rust),
            "waited_native_us": statistics.median(native),
        }
        if original:
            figures["waited_original_us"] = statistics.median(orig)
        figures["native_over_rust"] = figures["waited_native_us"] / figures["waited_rust_us"]
        if original:
            figures["native_over_original"] = figures["waited_native_us"] / figures["waited_original_us"]
        figures["asyncio_256_tasks_calls_s"] = asyncio_tasks(fe, 256, args.seconds)
        figures["asyncio_gather_1024_calls_s"] = asyncio_gather(fe, 1024, args.seconds)
        figures["threads_16_calls_s"] = threads(fe, 16, args.seconds)
        figures["starmap_calls_s"] = starmap(fe, 200_000)
    finally:
        proc.kill()
        proc.wait()

    rows = [
        ("waited add(4, 4), Rust frontend", "%.1f us" % figures["waited_rust_us"]),
        ("waited add(4, 4), taskit_native", "%.1f us" % figures["waited_native_us"]),
    ]
    if original:
        rows.append(("waited add(4, 4), TaskIt 4.0 client", "%.1f us" % figures["waited_original_us"]))
    rows.append(("taskit_native / Rust frontend", "%.2fx (target <= 1.5x)" % figures["native_over_rust"]))
    if original:
        rows.append(("taskit_native / TaskIt 4.0 client", "%.2fx (target <= 0.5x)" % figures["native_over_original"]))
    rows += [
        ("asyncio, 256 tasks in flight", "%.0f calls/s" % figures["asyncio_256_tasks_calls_s"]),
        ("asyncio.gather of 1024 calls", "%.0f calls/s" % figures["asyncio_gather_1024_calls_s"]),
        ("16 threads calling work", "%.0f calls/s" % figures["threads_16_calls_s"]),
        ("starmap, 1024 in flight", "%.0f calls/s" % figures["starmap_calls_s"]),
    ]
    for name, value in rows:
        print("%-40s %s" % (name, value))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
