"""Seconds per NeuroMask step on a real pretrained model, at batch 1 and a larger batch.

Exports EfficientNet-Lite0 (tools/export_efficientnet_lite0.py) if MODEL does not exist,
takes scikit-image's sample photographs as inputs, warms the session up, then times
`NeuroMask.attribute` over a fixed number of steps and prints a markdown table.

    python tools/bench_explain.py [--model efficientnet_lite0.onnx] [--steps 40] [--batch 8]
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
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
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
    print(f"{args.model.name}, {args.steps} steps, onnxruntime CPU\n")
    print("| batch | seconds per step | seconds per image-step | seconds per image at 1000 steps |")
    print("| --- | --- | --- | --- |")
    for batch in (1, args.batch):
        nm = NeuroMask(model, NeuroMaskConfig(steps=args.steps), batch_size=batch)
        nm.attribute(xs[0])  # warm-up: instrumentation and session creation
        t = time.perf_counter()
        nm.attribute(xs[:batch] if batch > 1 else xs[0])
        dt = (time.perf_counter() - t) / args.steps
        print(f"| {batch} | {dt:.3f} | {dt / batch:.3f} | {1000 * dt / batch:.0f} |")


if __name__ == "__main__":
    main()
