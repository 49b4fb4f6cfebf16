"""Faithfulness of NeuroMask and the other methods, measured so that it cannot fool itself.

- Photos: every real photograph found inside wheels (scikit-image's data, scikit-learn's
  sample images, matplotlib's sample data, and those of ultralytics, imgaug and mahotas,
  which `tools/wheel_photos.py` unpacks without installing them), split once and for all
  into a TUNING half and a TEST half (`SPLIT`, alternating within each source; the photos of
  the three later wheels all joined the test half, after the default was frozen). Tune only
  on `--split tune`; report `--split test`.
- Models: the pretrained EfficientNet-Lite0 (the tuning model) and any other ONNX classifier
  given with `--model` (EfficientNet-Lite2 from tools/export_efficientnet_lite0.py --variant
  lite2 is the held-out check).
- Scores: deletion and insertion AUC (RISE protocol, `curve_steps` steps) under two
  protocols: A = deletion to zero (the mean colour in normalised space) and insertion from a
  blur; B = the substrates swapped (deletion to the blur, insertion from zero). Per method:
  the mean of insertion - deletion under each, the per-image win rate of the first method
  against each other method and a paired bootstrap 95 % interval of the mean difference.
- Cost: seconds per image and model passes per image (rows through the model: a gradient
  method's rows are one forward and one backward pass each, a perturbation method's rows
  forward passes only).
- Noise floor: a random map and a centre prior (a Gaussian at the centre) in every table.

Maps are cached under `--cache` (one .npy per model, method, photo), so ablations only pay for
what changed.

    python tools/evaluate_methods.py --model /tmp/nm/effl0.onnx --split tune
    python tools/evaluate_methods.py --model /tmp/nm/effl2.onnx --split test --json out.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from neuromask_onnx import metrics
from neuromask_onnx.baselines import Classifier, run_method
from neuromask_onnx.optimize import NeuroMaskConfig, preset
from neuromask_onnx.preprocess import (
    describe_input,
    load_inputs,
    resolve_preprocessing,
)

# --------------------------------------------------------------------------- photos

SKIMAGE = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
           "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png", "coins.png",
           "moon.png", "brick.png", "grass.png", "gravel.png"]
SKLEARN = ["china.jpg", "flower.jpg"]
MATPLOTLIB = ["grace_hopper.jpg"]
WHEEL_PHOTOS = ["bus.jpg", "zidane.jpg", "quokka.jpg", "luispedro.jpg"]  # tools/wheel_photos.py


def find_photos() -> dict[str, Path]:
    """name -> path of every real photograph that an installed wheel ships."""
    found: dict[str, Path] = {}
    sources: list[tuple[str, list[str]]] = []
    try:
        import skimage

        sources.append((str(Path(skimage.__file__).parent / "data"), SKIMAGE))
    except ImportError:
        pass
    try:
        import sklearn

        sources.append((str(Path(sklearn.__file__).parent / "datasets" / "images"), SKLEARN))
    except ImportError:
        pass
    try:
        import matplotlib

        sources.append((str(Path(matplotlib.get_data_path()) / "sample_data"), MATPLOTLIB))
    except ImportError:
        pass
    from wheel_photos import DEFAULT_DIR

    sources.append((str(DEFAULT_DIR), WHEEL_PHOTOS))
    for folder, names in sources:
        for n in names:
            p = Path(folder) / n
            if p.is_file():
                found[Path(n).stem] = p
    return found


# Fixed once: objects and textures alternate between the halves. Never move a photo between
# halves after looking at scores.
SPLIT = {
    "tune": ["chelsea", "rocket", "hubble_deep_field", "ihc", "coins", "brick", "gravel",
             "china", "motorcycle_left"],
    "test": ["astronaut", "coffee", "retina", "camera", "moon", "grass", "flower",
             "grace_hopper", "bus", "zidane", "quokka", "luispedro"],
}

# --------------------------------------------------------------------------- methods

BASELINES: dict[str, dict[str, Any]] = {
    "saliency": {},
    "gradient_x_input": {},
    "smoothgrad": {"samples": 16},
    "integrated_gradients": {"steps": 32},
    "occlusion": {"window": 32, "stride": 16},
    "rise": {"masks": 1000, "cells": 7},
}
GRADIENT_METHODS = {"saliency", "gradient_x_input", "smoothgrad", "integrated_gradients"}


def random_map(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def centre_map(shape: tuple[int, ...]) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    return np.exp(-2.0 * sum(g * g for g in grids)).astype(np.float32)


def config_key(cfg: NeuroMaskConfig) -> str:
    """The config and the source of the code that turns it into a map (cache key)."""
    src = "".join((ROOT / "neuromask_onnx" / f).read_text()
                  for f in ("areas.py", "chunks.py", "explain.py", "optimize.py",
                            "smoothness.py"))
    text = json.dumps(cfg.to_dict(), sort_keys=True) + src
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def parse_config(text: str) -> NeuroMaskConfig:
    """`preset` or `preset:field=value,field=value` (tuples as a|b|c)."""
    name, _, rest = text.partition(":")
    cfg = preset(name)
    changes: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        k, v = item.split("=")
        cur = getattr(cfg, k)
        if isinstance(cur, tuple):
            changes[k] = tuple(type(cur[0])(x) for x in v.split("|"))
        elif isinstance(cur, bool):
            changes[k] = v.lower() in ("1", "true")
        else:
            changes[k] = type(cur)(v)
    return cfg.replace(**changes)


# --------------------------------------------------------------------------- scoring

PROTOCOLS = metrics.PROTOCOLS


def score(clf: Classifier, x: np.ndarray, t: int, m: np.ndarray, steps: int) -> dict[str, float]:
    sc = metrics.self_check(clf, x, t, m, steps=steps)
    out = {}
    for name in PROTOCOLS:
        out[f"{name}_del"] = sc[f"{name}_deletion_auc"]
        out[f"{name}_ins"] = sc[f"{name}_insertion_auc"]
        out[name] = sc[f"{name}_insertion_minus_deletion"]
    return out


def bootstrap(diff: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (n, len(diff)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("/tmp/nm/effl0.onnx"))
    ap.add_argument("--split", choices=["tune", "test", "all"], default="tune")
    ap.add_argument("--neuromask", action="append", default=None,
                    help="NeuroMask configs: preset[:field=value,...] (repeatable; first is "
                         "the one compared); default: the default preset")
    ap.add_argument("--methods", default=",".join([*BASELINES, "random", "centre"]))
    ap.add_argument("--baselines-only", action="store_true",
                    help="no NeuroMask row (fills the cache of the other methods)")
    ap.add_argument("--curve-steps", type=int, default=50)
    ap.add_argument("--photos", default=None, help="only these photos (comma list)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/nm/maps"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--save-maps", type=Path, default=None,
                    help="also write each NeuroMask map as .npy here")
    args = ap.parse_args()

    photos = find_photos()
    wanted = SPLIT["tune"] + SPLIT["test"] if args.split == "all" else SPLIT[args.split]
    if missing := [n for n in wanted if n not in photos]:
        print(f"warning: {len(missing)} photos not found ({', '.join(missing)}); "
              "install the test extra and run tools/wheel_photos.py", file=sys.stderr)
    names = [n for n in (SPLIT["tune"] + SPLIT["test"] if args.split == "all"
                         else SPLIT[args.split]) if n in photos
             and (args.photos is None or n in args.photos.split(","))]
    clf = Classifier(args.model, provider="cpu", batch_size=16)
    spec = describe_input(clf.model, clf.input_name)
    loaded = load_inputs([photos[n] for n in names], spec,
                         resolve_preprocessing(None, clf.model))
    xs = [inp.tensor for inp in loaded]
    targets = [int(t) for t in clf.probs(np.stack(xs)).argmax(axis=1)]
    mkey = hashlib.sha256(args.model.read_bytes()).hexdigest()[:12]
    configs = [parse_config(c) for c in (args.neuromask or ["default"])]
    labels = [f"neuromask[{c}]" for c in (args.neuromask or ["default"])]
    methods: list[tuple[str, Callable[[int], tuple[np.ndarray, float, int]]]] = []

    def nm_runner(cfg: NeuroMaskConfig) -> Callable[[int], tuple[np.ndarray, float, int]]:
        def run(i: int) -> tuple[np.ndarray, float, int]:
            nm = clf.neuromask(cfg)
            before = nm.model_runs
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ex = nm.attribute(xs[i], targets[i])
            assert not isinstance(ex, list)
            secs = time.perf_counter() - t0
            return np.asarray(ex.mask, np.float32), secs, nm.model_runs - before
        return run

    def base_runner(name: str) -> Callable[[int], tuple[np.ndarray, float, int]]:
        def run(i: int) -> tuple[np.ndarray, float, int]:
            shape = clf.mask_shape(xs[i])
            if name == "random":
                return random_map(shape, i), 0.0, 0
            if name == "centre":
                return centre_map(shape), 0.0, 0
            before = clf.model_runs
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m, secs = run_method(name, clf, xs[i], targets[i], seed=0, **BASELINES[name])
            return m, secs, clf.model_runs - before
        return run

    for label, cfg in zip(labels, configs, strict=True):
        if not args.baselines_only:
            methods.append((label + "#" + config_key(cfg), nm_runner(cfg)))
    for name in filter(None, args.methods.split(",")):
        methods.append((name, base_runner(name)))

    args.cache.mkdir(parents=True, exist_ok=True)
    table: dict[str, list[dict[str, float]]] = {}
    for key, run in methods:
        rows = []
        for i, n in enumerate(names):
            f = args.cache / f"{mkey}.{key.replace('/', '_')}.{n}.npz"
            if f.exists():
                z = np.load(f)
                m, secs, passes = z["map"], float(z["secs"]), int(z["passes"])
            else:
                m, secs, passes = run(i)
                np.savez(f, map=m, secs=secs, passes=passes)
            if args.save_maps and key.startswith("neuromask"):
                args.save_maps.mkdir(parents=True, exist_ok=True)
                np.save(args.save_maps / f"{n}.npy", m)
            sf = f.with_suffix(f".s{args.curve_steps}.json")
            if sf.exists():
                sc = json.loads(sf.read_text())
            else:
                sc = score(clf, xs[i], targets[i], m, args.curve_steps)
                sf.write_text(json.dumps(sc))
            rows.append({**sc, "secs": secs, "passes": passes})
        table[key] = rows
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        print(f"{key:60s} A {mean['A']:.3f} B {mean['B']:.3f} "
              f"({mean['secs']:.2f} s, {mean['passes']:.0f} passes)", flush=True)

    first = methods[0][0]
    print(f"\n{len(names)} photos ({args.split}), {args.model.name}, curves of "
          f"{args.curve_steps} steps; A = deletion to zero / insertion from blur, "
          "B = deletion to blur / insertion from zero\n")
    print("| method | A: del | A: ins | A: ins - del | B: del | B: ins | B: ins - del | "
          f"{first.split('#')[0]} wins A / B | diff A [95% CI] | diff B [95% CI] | s/image "
          "| passes/image |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    out_rows = []
    for key, rows in table.items():
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        cells = {}
        for proto in PROTOCOLS:
            mine = np.array([r[proto] for r in table[first]])
            theirs = np.array([r[proto] for r in rows])
            d = mine - theirs
            cells[proto] = (float(np.mean(d > 0)), float(d.mean()), *bootstrap(d))
        kind = "F+B" if key in GRADIENT_METHODS or key.startswith("neuromask") else "F"
        print(f"| {key.split('#')[0]} | {mean['A_del']:.3f} | {mean['A_ins']:.3f} | "
              f"**{mean['A']:.3f}** | {mean['B_del']:.3f} | {mean['B_ins']:.3f} | "
              f"**{mean['B']:.3f}** | "
              + ("-" if key == first else f"{cells['A'][0]:.0%} / {cells['B'][0]:.0%}")
              + " | " + ("-" if key == first else
                         f"{cells['A'][1]:+.3f} [{cells['A'][2]:+.3f}, {cells['A'][3]:+.3f}]")
              + " | " + ("-" if key == first else
                         f"{cells['B'][1]:+.3f} [{cells['B'][2]:+.3f}, {cells['B'][3]:+.3f}]")
              + f" | {mean['secs']:.2f} | {mean['passes']:.0f} {kind} |")
        out_rows.append({"method": key, **mean, "vs_first": cells})
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "split": args.split,
                                         "photos": names, "targets": targets,
                                         "curve_steps": args.curve_steps,
                                         "rows": out_rows}, indent=1))


if __name__ == "__main__":
    main()
