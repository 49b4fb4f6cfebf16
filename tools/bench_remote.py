"""Per-image cost of one NeuroMask step run remotely (Triton or `neuromask serve`, over gRPC /
HTTP) against a local onnxruntime run, on loopback.

    python tools/bench_remote.py [--model models/cnn_nchw.onnx] [--steps 100] [--batch 1 8]
        [--repeats 5] [--against triton|serve]

triton (default): writes a Python-backend Triton repository (`instrument --triton
--python-backend`) and starts nvidia-pytriton's tritonserver on free loopback ports. serve:
starts `neuromask serve MODEL --grpc-port P` (KServe; V2 infer of the same instrumented
model). Then explains the same `batch` inputs with `NeuroMask` (local, one intra-op thread,
like the server's session) and with `RemoteNeuroMask` over each protocol; prints seconds per
step divided by the batch.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from neuromask_onnx.explain import NeuroMask
from neuromask_onnx.localserver import free_port, serving
from neuromask_onnx.optimize import preset
from neuromask_onnx.remote import RemoteNeuroMask, ServedModel
from neuromask_onnx.triton import write_repository
from neuromask_onnx.tritonserver import local_server

ROOT = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live descendants (Triton's backend stubs)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def per_image_step(nm: NeuroMask, xs: list[np.ndarray], repeats: int,
                   server_pid: int | None) -> tuple[float, float]:
    """(wall, CPU) seconds per step and image: the fastest of `repeats` runs for wall time,
    and the mean client + server CPU time (which other processes on a shared machine do not
    inflate)."""
    best, cpu = float("inf"), 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nm.explain_many(xs[:1], [0])  # warm-up: sessions, connections
        for _ in range(repeats):
            c0 = time.process_time() + (cpu_seconds(server_pid) if server_pid else 0.0)
            (ex, *_), *_ = nm.explain_many(xs, [0] * len(xs))
            c1 = time.process_time() + (cpu_seconds(server_pid) if server_pid else 0.0)
            steps = ex.timings["optimize"] / ex.timings["per_step"]
            best = min(best, float(ex.timings["per_step"]) / len(xs))
            cpu += (c1 - c0) / (steps * len(xs)) / repeats
    return best, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "cnn_nchw.onnx"))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=5, help="report the fastest run")
    ap.add_argument("--against", choices=["triton", "serve"], default="triton")
    a = ap.parse_args()
    cfg = preset("default").replace(steps=a.steps, tolerance=0.0)
    with contextlib.ExitStack() as stack:
        if a.against == "triton":
            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            write_repository(a.model, tmp, name="m", python_backend=True)
            triton = stack.enter_context(local_server(tmp))
            name, pid, urls = "m", triton.process.pid, (triton.grpc_url, triton.http_url)
        else:
            grpc_port, name = free_port(), "m"
            served = stack.enter_context(serving(
                [a.model, "--name", name, "--grpc-port", str(grpc_port), "--max-instances",
                 str(max(a.batch))], name))
            pid, urls = served.process.pid, (f"grpc://127.0.0.1:{grpc_port}", served.url)
        print(f"model {Path(a.model).name} on {a.against}, {a.steps} steps, ms per image "
              "per step (wall: fastest run; cpu: client + server, mean)")
        print(f"{'batch':>5} " + " ".join(f"{k + ' ' + w:>11}" for k in
                                          ("local", "grpc", "http") for w in ("wall", "cpu")))
        for b in a.batch:
            local = NeuroMask(a.model, cfg, provider="cpu", threads=1, batch_size=b)
            shape = [d or 1 for d in local.dims[1:]]
            xs = list(np.random.default_rng(0).standard_normal((b, *shape))
                      .astype(np.float32))
            row = [*per_image_step(local, xs, a.repeats, None)]
            for url in urls:
                remote = RemoteNeuroMask(ServedModel.connect(url, name), cfg, batch_size=b)
                row += per_image_step(remote, xs, a.repeats, pid)
            print(f"{b:>5} " + " ".join(f"{v * 1e3:>11.3f}" for v in row))


if __name__ == "__main__":
    main()
