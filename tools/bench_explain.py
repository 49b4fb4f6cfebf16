"""Seconds per image of the default NeuroMask on a real pretrained model, alone and batched.

Exports EfficientNet-Lite0 (tools/export_efficientnet_lite0.py) if MODEL does not exist,
takes scikit-image's sample photographs as inputs, warms the session up, then times
`NeuroMask(model).attribute` (the default preset, or `--steps N` of it) `--reps` times and
prints a markdown table: the fastest wall time per image (other tenants only ever add time),
the process CPU time per image (all threads), and the model passes (rows through the
instrumented model, each one forward and one backward pass) per image.

    python tools/bench_explain.py [--model efficientnet_lite0.onnx] [--batch 4] [--reps 3]
        [--blas-threads-free]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "retina",
          "coins", "moon", "brick", "grass", "gravel")


def photos(n: int) -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in PHOTOS[:n]:
        a = getattr(skimage.data, name)()
        out.append(np.stack([a] * 3, axis=-1) if a.ndim == 2 else a[..., :3])
    return out


def main() -> None:
    from PIL import Image

    from neuromask_onnx import NeuroMask, NeuroMaskConfig
    from neuromask_onnx.graph import load_model
    from neuromask_onnx.preprocess import describe_input, load_inputs, resolve_preprocessing

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("efficientnet_lite0.onnx"))
    ap.add_argument("--steps", type=int, default=None, help="default: the preset's")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--blas-threads-free", action="store_true",
                    help="leave numpy's BLAS threads alone (without runtime.blas_on_one_thread)")
    args = ap.parse_args()
    if args.blas_threads_free:
        import contextlib
        import importlib

        explain = importlib.import_module("neuromask_onnx.explain")
        explain.blas_on_one_thread = contextlib.nullcontext
    if not args.model.exists():
        from export_efficientnet_lite0 import export

        export(args.model)
    model = load_model(args.model)
    spec = describe_input(model)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, a in enumerate(photos(args.batch)):
            paths.append(Path(tmp) / f"{i}.png")
            Image.fromarray(a).save(paths[-1])
        xs = [inp.tensor for inp in load_inputs(paths, spec, resolve_preprocessing(None, model))]
    cfg = NeuroMaskConfig().replace(steps=args.steps)
    print(f"{args.model.name}, default preset ({cfg.steps} steps), onnxruntime CPU\n")
    print("| images per call | wall s per image (fastest) | CPU s per image | "
          "model passes per image |")
    print("| --- | --- | --- | --- |")
    for batch in (1, args.batch):
        nm = NeuroMask(model, cfg, batch_size=batch, provider="cpu")
        nm.attribute(xs[0])  # warm-up: instrumentation and session creation
        walls, cpus = [], []
        for _ in range(args.reps):
            runs = nm.model_runs
            t, c = time.perf_counter(), time.process_time()
            nm.attribute(xs[:batch] if batch > 1 else xs[0])
            walls.append((time.perf_counter() - t) / batch)
            cpus.append((time.process_time() - c) / batch)
            passes = (nm.model_runs - runs) / batch
        print(f"| {batch} | {min(walls):.2f} | {min(cpus):.2f} | {passes:.0f} |", flush=True)


if __name__ == "__main__":
    main()
