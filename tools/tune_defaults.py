"""Choose the default NeuroMask preset by measurement (issue 4, part 4 "Tuned defaults").

Model: the pretrained ImageNet EfficientNet-Lite0, exported with its own preprocessing by
`tools/export_efficientnet_lite0.py` (done here when --model does not exist). Inputs: the real
photographs that scikit-image ships (written to --photos as JPEG when missing). Each candidate
setting explains every photo's top-1 class; its score is the mean over the photos of
insertion AUC - deletion AUC (`neuromask_onnx.metrics`, RISE protocol: 50 curve steps,
deletion to zero, insertion from a blur, seed 0 -- the same settings as `neuromask compare`).
Also reported: seconds per image of the explainer (all photos in one NeuroMask batch).

The search is small on purpose (a CPU budget of about 25 minutes on 2 cores): the authors'
ImageNet settings cut to 150 and 300 steps, then coarser masks with a larger learning rate,
the blur baseline, a higher temperature and a lighter sparsity term at 150 steps, then the
best 150-step setting again at 300 steps. Tuned on this one model only, so how the defaults
carry over to other models stays an honest test.

    python tools/tune_defaults.py --model /tmp/effl0.onnx --photos /tmp/photos \
        --json /tmp/tune_defaults.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from neuromask_onnx import metrics
from neuromask_onnx.baselines import Classifier
from neuromask_onnx.explain import NeuroMask
from neuromask_onnx.optimize import PRESETS, NeuroMaskConfig
from neuromask_onnx.preprocess import (
    describe_input,
    load_inputs,
    resolve_preprocessing,
)

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "retina",
          "coins", "moon", "brick", "grass", "gravel", "motorcycle")
"""scikit-image's photographs (13; the issue asks for at least 10)."""

CURVE = {"steps": 50, "deletion": "zero", "insertion": "blur", "seed": 0}
"""Deletion/insertion settings, the same for every configuration and method."""

REF = PRESETS["reference"]
FAST = {"learning_rate": 0.3, "mask_scale": 8, "baseline": "blur"}
"""The common core of the coarse, fast candidates."""

CANDIDATES: list[tuple[str, NeuroMaskConfig]] = [
    ("reference", REF.replace(steps=150)),
    ("reference", REF.replace(steps=300)),
    ("lr0.3-s8-zero", REF.replace(steps=150, learning_rate=0.3, mask_scale=8)),
    ("lr0.3-s8-blur", REF.replace(steps=150, **FAST)),
    ("lr0.3-s4-blur", REF.replace(steps=150, **{**FAST, "mask_scale": 4})),
    ("lr0.3-s8-blur-T1", REF.replace(steps=150, temperature=1.0, **FAST)),
    ("lr0.3-s8-blur-sp0.1", REF.replace(steps=150, sparse_weight=0.1, **FAST)),
]
"""Fixed candidates; the search adds the best 150-step non-reference one at 300 steps."""


def seed_everything(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (legacy global RNG, in case anything uses it)


def ensure_model(path: Path) -> Path:
    if not path.exists():
        from export_efficientnet_lite0 import export

        path.parent.mkdir(parents=True, exist_ok=True)
        export(path)
        print(f"exported EfficientNet-Lite0 to {path}", flush=True)
    return path


def ensure_photos(folder: Path) -> list[Path]:
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS:
        p = folder / f"{name}.jpg"
        if not p.exists():
            a = np.asarray(data.stereo_motorcycle()[0] if name == "motorcycle"
                           else getattr(data, name)())
            if a.dtype != np.uint8:
                a = (255 * (a - a.min()) / max(float(np.ptp(a)), 1e-12)).astype(np.uint8)
            if a.ndim == 3 and a.shape[2] == 4:
                a = a[..., :3]
            Image.fromarray(a).convert("RGB").save(p, quality=95)
        paths.append(p)
    return paths


def describe(cfg: NeuroMaskConfig) -> str:
    """The fields that differ from the reference preset (steps reported separately)."""
    ref = REF.to_dict()
    diff = {k: v for k, v in cfg.to_dict().items() if k != "steps" and ref[k] != v}
    return ", ".join(f"{k}={v}" for k, v in diff.items()) or "reference"


def score(clf: Classifier, xs: list[np.ndarray], targets: list[int],
          maps: list[np.ndarray]) -> tuple[float, float]:
    ins, dele = [], []
    for x, t, m in zip(xs, targets, maps, strict=True):
        dele.append(metrics.deletion(clf, x, t, m, steps=CURVE["steps"],
                                     baseline=CURVE["deletion"], seed=CURVE["seed"]).auc)
        ins.append(metrics.insertion(clf, x, t, m, steps=CURVE["steps"],
                                     baseline=CURVE["insertion"], seed=CURVE["seed"]).auc)
    return float(np.mean(ins)), float(np.mean(dele))


def evaluate(model: Path, clf: Classifier, xs: list[np.ndarray], targets: list[int],
             cfg: NeuroMaskConfig) -> dict[str, float]:
    seed_everything(cfg.seed)
    nm = NeuroMask(model, cfg, provider="cpu", batch_size=len(xs))
    t0 = time.perf_counter()
    exps = nm.attribute(xs, targets)
    secs = (time.perf_counter() - t0) / len(xs)
    assert isinstance(exps, list)
    maps = [np.asarray(e.mask, np.float32).reshape(clf.mask_shape(x))
            for e, x in zip(exps, xs, strict=True)]
    ins, dele = score(clf, xs, targets, maps)
    return {"insertion": ins, "deletion": dele, "ins_minus_del": ins - dele,
            "seconds_per_image": secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("/tmp/effl0.onnx"))
    ap.add_argument("--photos", type=Path, default=Path("/tmp/photos"))
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    ap.add_argument("--budget-min", type=float, default=30.0,
                    help="start no new configuration after this many minutes")
    args = ap.parse_args()
    seed_everything(0)
    start = time.perf_counter()
    model = ensure_model(args.model)
    paths = ensure_photos(args.photos)
    clf = Classifier(model, provider="cpu", batch_size=64)
    spec = describe_input(clf.model, clf.input_name)
    loaded = load_inputs(paths, spec, resolve_preprocessing(None, clf.model))
    xs = [inp.tensor for inp in loaded]
    targets = [int(t) for t in clf.probs(np.stack(xs)).argmax(axis=1)]
    print(f"{len(xs)} photos, curves {CURVE}", flush=True)

    rows: list[dict[str, object]] = []

    def run(name: str, cfg: NeuroMaskConfig) -> None:
        if (time.perf_counter() - start) / 60 > args.budget_min:
            print(f"skipped {name} @ {cfg.steps}: over the {args.budget_min} min budget",
                  flush=True)
            return
        r = evaluate(model, clf, xs, targets, cfg)
        row = {"name": name, "config": describe(cfg), "steps": cfg.steps, **r,
               "full": cfg.to_dict()}
        rows.append(row)
        print(f"done {name} @ {cfg.steps}: {json.dumps(r)}", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"curve": CURVE, "photos": len(xs),
                                             "rows": rows}, indent=1))

    for name, cfg in CANDIDATES:
        run(name, cfg)
    fast = [r for r in rows if r["steps"] == 150 and r["name"] != "reference"]
    if fast:
        best = max(fast, key=lambda r: float(r["ins_minus_del"]))  # type: ignore[arg-type]
        cfg = NeuroMaskConfig(**{**best["full"], "steps": 300})  # type: ignore[dict-item]
        run(str(best["name"]), cfg)

    print("\n| config | steps | insertion | deletion | ins - del | s/image |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']}: {r['config']} | {r['steps']} | {r['insertion']:.3f} | "
              f"{r['deletion']:.3f} | {r['ins_minus_del']:.3f} | "
              f"{r['seconds_per_image']:.1f} |")
    print(f"\n{len(xs)} photos, EfficientNet-Lite0, curves {CURVE}; "
          f"total {(time.perf_counter() - start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
