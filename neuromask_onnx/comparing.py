"""What `neuromask compare` and `evaluate` do, each as one library call (see `pipeline`).

`compare_files` runs each method on each input, scores every map under the deletion and
insertion curves and writes the comparison's three files together (`report` renders them);
`evaluate_map` scores one saliency map the user brings. Both read the inputs before the
classifier is built, so a model with dynamic dimensions takes them from the inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import outputs, report
from .contract import InputSpec
from .errors import ConvergenceWarning, InputError
from .graph import load_model
from .optimize import NeuroMaskConfig
from .pipeline import Progress, explained_input, noop
from .preprocess import MAX_PIXELS, LoadedInput, load_inputs, resolve_preprocessing

COMPARE_FILES = {"csv": "compare.csv", "json": "compare.json", "html": "report.html"}


def load_for_inputs(model: Path, inputs: Sequence[Path], *, input_name: str | None,
                    output_name: str | None, output_kind: str, layout: str | None,
                    preprocess: str | None, size: Sequence[int] | None, provider: str,
                    batch_size: int, threads: int | None, max_pixels: int = MAX_PIXELS,
                    ) -> tuple[Any, InputSpec, list[LoadedInput]]:
    """(classifier, input spec, loaded inputs): the inputs are read first, so a model with
    dynamic dims takes them from the inputs (.npy shapes, or --size for images)."""
    from .baselines import Classifier

    if size is not None and len(size) != 2:
        msg = f"--size takes H,W, got {','.join(map(str, size))!r}"
        raise InputError(msg)
    proto = load_model(model)
    spec = explained_input(proto, input_name, layout)
    prep = resolve_preprocessing(preprocess, proto)
    if size:
        prep = prep.replace(size=tuple(size))
    loaded = load_inputs(inputs, spec, prep, max_pixels)
    clf = Classifier(proto, input_name=spec.name, output_name=output_name,
                     output_kind=output_kind, layout=layout, provider=provider,
                     batch_size=batch_size, threads=threads,
                     input_shape=loaded[0].tensor.shape if loaded else None)
    return clf, spec, loaded


def targets_for(clf: Any, xs: list[np.ndarray], target: int | None) -> list[int]:
    if target is not None:
        if not 0 <= target < clf.num_classes:
            msg = (f"target class {target} is out of range: the model has {clf.num_classes} "
                   "classes")
            raise InputError(msg)
        return [target] * len(xs)
    return [int(np.argmax(p)) for p in clf.probs(xs)]


def check_box(box: Sequence[int] | None) -> np.ndarray | None:
    if box is None:
        return None
    if len(box) != 4:
        msg = f"--box takes y0,x0,y1,x1 (model pixels, end-exclusive), got {list(box)}"
        raise InputError(msg)
    return np.asarray(box)


@dataclass
class CompareRun:
    results: list[report.InputResult]
    rows: list[dict[str, float | str]]
    columns: list[str]
    notes: list[str]
    written: list[Path]


def compare_files(model: Path, inputs: Sequence[Path], out: Path, *, methods: Sequence[str],
                  config: NeuroMaskConfig, target: int | None = None, curve_steps: int = 50,
                  deletion_baseline: str = "zero", insertion_baseline: str = "blur",
                  box: Sequence[int] | None = None, seed: int = 0,
                  input_name: str | None = None, output_name: str | None = None,
                  output_kind: str = "auto", layout: str | None = None,
                  preprocess: str | None = None, size: Sequence[int] | None = None,
                  provider: str = "auto", batch_size: int = 64,
                  threads: int | None = None, force: bool = False,
                  max_pixels: int = MAX_PIXELS, progress: Progress = noop,
                  given: Mapping[str, Sequence[tuple[np.ndarray, float]]] | None = None,
                  ) -> CompareRun:
    """Run each method on each input, score it, write compare.csv, compare.json, report.html.

    `given` supplies ready (map, seconds) pairs for some methods, one per input (e.g. the
    masks `explain` just learned), instead of running them again.
    """
    from . import metrics
    from .baselines import METHODS, run_method

    names = list(dict.fromkeys(m.strip() for m in methods if m.strip()))
    unknown = [m for m in names if m not in METHODS]
    if not names or unknown:
        msg = f"unknown method {unknown[0]!r}" if unknown else "no methods given"
        msg += f"; choose from {', '.join(METHODS)}"
        raise InputError(msg)
    region = check_box(box)
    outputs.check_writable(out)
    paths = {k: out / f for k, f in COMPARE_FILES.items()}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        msg = f"{existing[0]!r} already exists; pass --force to overwrite"
        raise InputError(msg)
    clf, spec, loaded = load_for_inputs(
        model, inputs, input_name=input_name, output_name=output_name, output_kind=output_kind,
        layout=layout, preprocess=preprocess, size=size, provider=provider,
        batch_size=batch_size, threads=threads, max_pixels=max_pixels)
    xs = [inp.tensor for inp in loaded]
    targets = targets_for(clf, xs, target)
    probs = clf.probs(xs)
    chan = spec.layout.index("C") - 1 if spec.is_image else None
    total, done = len(loaded) * len(names), 0
    progress(0, total, "comparing")
    results: list[report.InputResult] = []
    notes: list[str] = []
    for k, (inp, x, t, p) in enumerate(zip(loaded, xs, targets, probs, strict=True)):
        image = inp.image if inp.image is not None else report.tensor_image(x, chan)
        geo = inp.geometry
        res = report.InputResult(inp.name, t, None, float(p[t]), image,
                                 to_image=geo.to_original if geo is not None else None)
        for name in names:
            progress(done, total, f"{inp.name}: {name}")
            if given is not None and name in given:
                sal, secs = np.asarray(given[name][k][0], np.float32), given[name][k][1]
            else:
                opts: dict[str, Any] = {"config": config} if name == "neuromask" else {}
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", ConvergenceWarning)
                    sal, secs = run_method(name, clf, x, t, seed=seed, **opts)
                notes += [f"{inp.name} {name}: {w.message}" for w in caught
                          if issubclass(w.category, ConvergenceWarning)]
            scores, d, i = metrics.evaluate(
                clf, x, t, sal, steps=curve_steps, baseline=deletion_baseline,  # type: ignore[arg-type]
                insertion_baseline=insertion_baseline, region=region, seed=seed)  # type: ignore[arg-type]
            res.methods.append(report.MethodResult(name, sal, secs, scores, d, i))
            done += 1
        results.append(res)
    progress(total, total, "writing")
    meta = {"model": str(model), "methods": names, "curve_steps": curve_steps,
            "deletion_baseline": deletion_baseline, "insertion_baseline": insertion_baseline,
            "seed": seed, "neuromask_config": config.to_dict(),
            "box": None if region is None else [int(v) for v in region]}
    blobs, rows, cols = report.comparison_files(results, meta, notes,
                                                f"neuromask compare: {model.name}")
    written = outputs.write_all(out, [(paths[kind], data) for kind, data in blobs.items()])
    return CompareRun(results, rows, cols, notes, written)


def evaluate_map(model: Path, input_path: Path, map_path: Path, *, target: int | None = None,
                 curve_steps: int = 50, deletion_baseline: str = "zero",
                 insertion_baseline: str = "blur", box: Sequence[int] | None = None,
                 seed: int = 0, input_name: str | None = None, output_name: str | None = None,
                 output_kind: str = "auto", layout: str | None = None,
                 preprocess: str | None = None, size: Sequence[int] | None = None,
                 provider: str = "auto", batch_size: int = 64,
                 threads: int | None = None, max_pixels: int = MAX_PIXELS,
                 progress: Progress = noop) -> tuple[int, dict[str, float]]:
    """(target, scores) of one saliency map: deletion/insertion AUC, sparsity (+ box)."""
    from . import metrics

    region = check_box(box)
    progress(0, 3, "loading the model")
    clf, _spec, loaded = load_for_inputs(
        model, [input_path], input_name=input_name, output_name=output_name,
        output_kind=output_kind, layout=layout, preprocess=preprocess, size=size,
        provider=provider, batch_size=batch_size, threads=threads, max_pixels=max_pixels)
    if len(loaded) != 1:
        msg = f"{str(input_path)!r} holds {len(loaded)} inputs; evaluate takes one"
        raise InputError(msg)
    x = loaded[0].tensor
    try:
        sal = np.asarray(np.load(map_path, allow_pickle=False), np.float64)
    except (ValueError, OSError, EOFError) as exc:
        msg = f"cannot read {str(map_path)!r} as a .npy array ({type(exc).__name__})"
        raise InputError(msg) from None
    if not np.all(np.isfinite(sal)):
        msg = f"saliency map {str(map_path)!r} holds NaN or infinite values"
        raise InputError(msg)
    want = clf.mask_shape(x)
    if sal.shape != want and sal.ndim and sal.shape[0] == 1 and sal.shape[1:] in (want, x.shape):
        sal = sal[0]
    if sal.shape == x.shape and sal.shape != want:
        sal = clf.to_map(sal, signed=True)
    sal = metrics.check_map(sal, want)
    progress(1, 3, "top-1 class")
    t = targets_for(clf, [x], target)[0]
    progress(2, 3, "deletion and insertion curves")
    scores, _, _ = metrics.evaluate(clf, x, t, sal, steps=curve_steps,
                                    baseline=deletion_baseline,  # type: ignore[arg-type]
                                    insertion_baseline=insertion_baseline,  # type: ignore[arg-type]
                                    region=region, seed=seed)
    progress(3, 3, "done")
    return t, scores
