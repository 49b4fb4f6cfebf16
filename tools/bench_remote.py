"""Per-image cost of one NeuroMask step run remotely (Triton over gRPC / HTTP) against a local
onnxruntime run, on loopback.

    python tools/bench_remote.py [--model models/cnn_nchw.onnx] [--steps 100] [--batch 1 8]

Writes a Python-backend Triton repository (`instrument --triton --python-backend`), starts
nvidia-pytriton's tritonserver on free loopback ports, and explains the same `batch` inputs
with `NeuroMask` (local, one intra-op thread, like the server's session) and with
`RemoteNeuroMask` over each protocol; prints seconds per step divided by the batch.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np

from neuromask_onnx.explain import NeuroMask
from neuromask_onnx.optimize import preset
from neuromask_onnx.remote import RemoteNeuroMask, ServedModel
from neuromask_onnx.triton import write_repository
from neuromask_onnx.tritonserver import local_server

ROOT = Path(__file__).resolve().parent.parent


def per_image_step(nm: NeuroMask, xs: list[np.ndarray]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nm.explain_many(xs[:1], [0])  # warm-up: sessions, connections
        (ex, *_), *_ = nm.explain_many(xs, [0] * len(xs))
    return float(ex.timings["per_step"]) / len(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "cnn_nchw.onnx"))
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    a = ap.parse_args()
    cfg = preset("default").replace(steps=a.steps, tolerance=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        write_repository(a.model, tmp, name="m", python_backend=True)
        with local_server(tmp) as server:
            print(f"model {Path(a.model).name}, {a.steps} steps, ms per image per step")
            print(f"{'batch':>5} {'local':>8} {'grpc':>8} {'http':>8}")
            for b in a.batch:
                local = NeuroMask(a.model, cfg, provider="cpu", threads=1, batch_size=b)
                shape = [d or 1 for d in local.dims[1:]]
                xs = list(np.random.default_rng(0).standard_normal((b, *shape))
                          .astype(np.float32))
                row = [per_image_step(local, xs)]
                for url in (server.grpc_url, server.http_url):
                    remote = RemoteNeuroMask(ServedModel.connect(url, "m"), cfg, batch_size=b)
                    row.append(per_image_step(remote, xs))
                print(f"{b:>5} " + " ".join(f"{v * 1e3:>8.3f}" for v in row))


if __name__ == "__main__":
    main()
