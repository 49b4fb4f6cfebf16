"""Bounded load test of `neuromask serve` on loopback: requests/s, p50/p99 latency, errors,
server memory after the run.

    python tools/load_serve.py [--model models/cnn_nchw.onnx] [--requests 48]
        [--concurrency 16] [--steps 50] [--workers 2]

Starts the server in its own process on a free 127.0.0.1 port, sends one warm-up request,
then `--requests` :explain requests (a 32x32 PNG each, different seeds) from `--concurrency`
client threads, and reads the server's VmRSS / VmHWM from /proc afterwards.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from neuromask_onnx.localserver import Served, ServerStartError, serving

ROOT = Path(__file__).resolve().parent.parent


def proc_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "cnn_nchw.onnx"))
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    name = Path(a.model).name.split(".")[0]
    log = Path(tempfile.mkdtemp(prefix="nm-serve-")) / "server.log"
    args = [a.model, "--preprocess", "raw", "--workers", str(a.workers)]
    try:
        with serving(args, name, log=log, timeout=90, grace=15) as served:
            measure(a, served)
    except ServerStartError as e:
        sys.exit(f"server did not start: {e}")


def measure(a: argparse.Namespace, served: Served) -> None:
    """The warm-up, the timed requests from `a.concurrency` threads, and the report."""
    url, proc, ready = served.model_url, served.process, served.ready_s
    rss0 = proc_kb(proc.pid, "VmRSS")
    bodies = []
    for i in range(a.requests + 1):
        px = (np.random.default_rng(i).uniform(0, 1, (32, 32, 3)) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="PNG")
        bodies.append(json.dumps({
            "instances": [{"image_b64": base64.b64encode(buf.getvalue()).decode()}],
            "parameters": {"steps": a.steps, "seed": i}}).encode())

    def ask(body: bytes) -> tuple[float, int]:
        req = urllib.request.Request(url + ":explain", data=body,
                                     headers={"Content-Type": "application/json"})
        t = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                r.read()
                code = r.status
        except urllib.error.HTTPError as e:
            code = e.code
        except OSError:
            code = -1
        return time.perf_counter() - t, code

    ask(bodies[0])  # warm-up
    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.concurrency) as pool:
        results = list(pool.map(ask, bodies[1:]))
    wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in results)
    errors = sum(1 for r in results if r[1] != 200)
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
    print(f"server ready in {ready:.1f} s; {a.requests} :explain requests, "
          f"{a.concurrency} concurrent, {a.steps} steps, {a.workers} workers, "
          f"model {Path(a.model).name}")
    print(f"requests/s {a.requests / wall:.2f}  p50 {statistics.median(lat) * 1e3:.0f} ms  "
          f"p99 {p99 * 1e3:.0f} ms  errors {errors}  wall {wall:.2f} s")
    print(f"server RSS {rss0 / 1024:.0f} MB before, {proc_kb(proc.pid, 'VmRSS') / 1024:.0f} MB"
          f" after, peak {proc_kb(proc.pid, 'VmHWM') / 1024:.0f} MB")


if __name__ == "__main__":
    main()
