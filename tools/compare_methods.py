"""Compare NeuroMask's default preset with the baseline saliency methods (issue 4).

Same model, photos and curve settings as `tools/tune_defaults.py` (EfficientNet-Lite0, the 13
scikit-image photographs, top-1 class, 50 curve steps, deletion to zero, insertion from a
blur, seed 0). Per method: mean deletion AUC (lower is better), mean insertion AUC (higher is
better), their difference and seconds per image, every method run one image at a time through
`baselines.run_method` on the exact ONNX model (onnxruntime, CPU). RISE and occlusion use
modest settings (below) so the whole run takes about ten minutes on 2 cores.

    python tools/compare_methods.py --model /tmp/effl0.onnx --photos /tmp/photos \
        --json /tmp/compare_methods.json
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from tune_defaults import (
    CURVE,
    ensure_model,
    ensure_photos,
    seed_everything,
)

from neuromask_onnx import metrics
from neuromask_onnx.baselines import Classifier, run_method
from neuromask_onnx.optimize import preset
from neuromask_onnx.preprocess import (
    describe_input,
    load_inputs,
    resolve_preprocessing,
)

OPTIONS: dict[str, dict[str, Any]] = {
    "saliency": {},
    "gradient_x_input": {},
    "smoothgrad": {"samples": 16},
    "integrated_gradients": {"steps": 32},
    "occlusion": {"window": 32, "stride": 16},
    "rise": {"masks": 256, "cells": 7},
}
"""Baseline settings (documented in the table's footnote)."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("/tmp/effl0.onnx"))
    ap.add_argument("--photos", type=Path, default=Path("/tmp/photos"))
    ap.add_argument("--preset", default="default", help="NeuroMask preset to compare")
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    args = ap.parse_args()
    seed_everything(0)
    model = ensure_model(args.model)
    paths = ensure_photos(args.photos)
    clf = Classifier(model, provider="cpu", batch_size=64)
    spec = describe_input(clf.model, clf.input_name)
    loaded = load_inputs(paths, spec, resolve_preprocessing(None, clf.model))
    xs = [inp.tensor for inp in loaded]
    targets = [int(t) for t in clf.probs(np.stack(xs)).argmax(axis=1)]
    cfg = preset(args.preset)
    methods: dict[str, dict[str, Any]] = {"neuromask": {"config": cfg}, **OPTIONS}
    print(f"{len(xs)} photos, curves {CURVE}, neuromask preset {args.preset!r}: {cfg}",
          flush=True)
    rows = []
    for name, opts in methods.items():
        dele, ins, secs = [], [], []
        for x, t in zip(xs, targets, strict=True):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sal, s = run_method(name, clf, x, t, seed=CURVE["seed"], **opts)
            secs.append(s)
            dele.append(metrics.deletion(clf, x, t, sal, steps=CURVE["steps"],
                                         baseline=CURVE["deletion"], seed=CURVE["seed"]).auc)
            ins.append(metrics.insertion(clf, x, t, sal, steps=CURVE["steps"],
                                         baseline=CURVE["insertion"], seed=CURVE["seed"]).auc)
        row = {"method": name, "deletion": float(np.mean(dele)), "insertion": float(np.mean(ins)),
               "seconds_per_image": float(np.mean(secs))}
        row["ins_minus_del"] = row["insertion"] - row["deletion"]
        rows.append(row)
        print(f"done {name}: {json.dumps(row)}", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"curve": CURVE, "photos": len(xs),
                                             "preset": args.preset, "config": cfg.to_dict(),
                                             "options": OPTIONS, "rows": rows}, indent=1))
    print("\n| method | deletion AUC (lower) | insertion AUC (higher) | ins - del | s/image |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['deletion']:.3f} | {r['insertion']:.3f} | "
              f"{r['ins_minus_del']:.3f} | {r['seconds_per_image']:.2f} |")
    opts = "; ".join(f"{k} {v}" for k, v in OPTIONS.items() if v)
    print(f"\n{len(xs)} photos, EfficientNet-Lite0, onnxruntime CPU; NeuroMask preset "
          f"{args.preset!r} ({cfg.steps} steps); {opts}", flush=True)


if __name__ == "__main__":
    main()
