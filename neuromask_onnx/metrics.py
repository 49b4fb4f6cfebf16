"""Scores for saliency maps, on onnxruntime alone: is the map faithful, local, concise, and does
it depend on the model at all?

A map is an array over the mask axes (e.g. [H, W]; see `baselines`), higher = more important.
Faithfulness follows the RISE protocol (Petsiuk et al. 2018): points are removed (deletion)
or inserted (insertion) most-important first in `steps` equal steps, the target probability
is tracked, and the score is the area under that curve over the fraction in [0, 1]
(trapezoid rule). Removed points take the zero, blur or per-channel mean baseline. Ties in the
map are broken by a seeded random permutation, so a constant map is a random order. All curve
points of one input run as one batch. Each function's docstring says whether higher or lower
is better; `METRICS` records it for the tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnx
from onnx import numpy_helper
from scipy import ndimage
from scipy.stats import rankdata

from .errors import InputError
from .mask import masked_out

if TYPE_CHECKING:
    from .baselines import Classifier

Removal = Literal["zero", "blur", "mean"]


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve: target probability at each removed/inserted fraction."""

    fractions: np.ndarray
    probs: np.ndarray
    auc: float


def check_map(saliency: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    s = np.asarray(saliency, np.float64)
    if s.shape != tuple(shape):
        msg = f"saliency map has shape {list(s.shape)} but the model's mask axes take " \
              f"{list(shape)}"
        raise InputError(msg)
    if not np.all(np.isfinite(s)):
        msg = "saliency map holds NaN or infinite values"
        raise InputError(msg)
    return s


def order(saliency: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flat indices most-important first; ties in a seeded random order."""
    flat = np.asarray(saliency, np.float64).ravel()
    perm = np.random.default_rng(seed).permutation(flat.size)
    return perm[np.argsort(-flat[perm], kind="stable")]


def removal_baseline(clf: Classifier, x: np.ndarray, how: Removal = "zero",
                     blur_sigma: float = 5.0) -> np.ndarray:
    """What a removed point becomes (`mask.masked_out`): zero, a Gaussian blur of x over the
    mask axes (RISE's insertion start; float32), or each channel's mean over the mask axes
    (accumulated in x's own float type)."""
    if how not in ("zero", "blur", "mean"):
        msg = f"removal baseline must be zero, blur or mean, got {how!r}"
        raise InputError(msg)
    axes = [a - 1 for a in clf.mask_axes]
    src = x.astype(np.float32) if how == "blur" else x  # the blur has always been float32
    return masked_out(src, how, axes, blur_sigma=blur_sigma, mean_dtype=None)


def _curve(clf: Classifier, x: np.ndarray, target: int, saliency: np.ndarray, steps: int,
           baseline: Removal, blur_sigma: float, insert: bool, seed: int) -> Curve:
    if steps < 1:
        msg = f"curves need at least 1 step, got {steps}"
        raise InputError(msg)
    ms = clf.mask_shape(x)
    s = check_map(saliency, ms)
    b = removal_baseline(clf, x, baseline, blur_sigma)
    idx = order(s, seed)
    n = idx.size
    counts = np.rint(np.linspace(0, n, steps + 1)).astype(int)
    rank = np.empty(n, int)
    rank[idx] = np.arange(n)
    # keep[i, p] = 1 where point p is still original (deletion) / already inserted (insertion)
    chosen = rank[None, :] < counts[:, None]
    keep = (chosen if insert else ~chosen).astype(np.float32).reshape(len(counts), *ms)
    shape = [len(counts)] + [x.shape[i - 1] if i in clf.mask_axes else 1
                             for i in range(1, x.ndim + 1)]
    xs = b[None] + keep.reshape(shape) * (x - b)[None]
    p = clf.probs(xs.astype(np.float32))[:, target]
    frac = counts / n
    return Curve(frac, p, trapezoid(p, frac))


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Area under y(x), trapezoid rule: numpy's `trapezoid` formula (numpy >= 2 only has that
    name, numpy 1.x only `trapz`; the floor is numpy 1.24)."""
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    return float((np.diff(x) * (y[1:] + y[:-1]) / 2.0).sum())


def deletion(clf: Classifier, x: np.ndarray, target: int, saliency: np.ndarray, *,
             steps: int = 50, baseline: Removal = "zero", blur_sigma: float = 5.0,
             seed: int = 0) -> Curve:
    """Deletion AUC: remove points most-important first; LOWER is better (the probability
    should fall fast)."""
    return _curve(clf, x, target, saliency, steps, baseline, blur_sigma, False, seed)


def insertion(clf: Classifier, x: np.ndarray, target: int, saliency: np.ndarray, *,
              steps: int = 50, baseline: Removal = "blur", blur_sigma: float = 5.0,
              seed: int = 0) -> Curve:
    """Insertion AUC: start from the baseline (blur, as in RISE) and insert points
    most-important first; HIGHER is better (the probability should rise fast)."""
    return _curve(clf, x, target, saliency, steps, baseline, blur_sigma, True, seed)


# --------------------------------------------------------------------------- localisation


def region_mask(shape: Sequence[int], box: Sequence[int] | np.ndarray) -> np.ndarray:
    """A boolean region from a box (y0, x0, y1, x1; end-exclusive, 2-D maps) or a mask."""
    arr = np.asarray(box)
    if arr.shape == tuple(shape):
        return arr.astype(bool)
    if arr.shape != (4,) or len(shape) != 2:
        msg = f"a region is a box y0,x0,y1,x1 on a 2-D map or a mask of shape {list(shape)}; " \
              f"got shape {list(arr.shape)}"
        raise InputError(msg)
    y0, x0, y1, x1 = (int(v) for v in arr)
    if not (0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]):
        msg = f"box {[y0, x0, y1, x1]} is empty or outside the {list(shape)} map"
        raise InputError(msg)
    out = np.zeros(tuple(shape), bool)
    out[y0:y1, x0:x1] = True
    return out


def pointing_game(saliency: np.ndarray, region: np.ndarray, tolerance: int = 0) -> float:
    """1.0 if the map's maximum lies in the region or within `tolerance` points of it
    (Euclidean; the original game uses 15 pixels), else 0.0; HIGHER is better (its mean over
    inputs is the hit rate). Ties: any maximum counts."""
    s = np.asarray(saliency, np.float64)
    r = np.asarray(region, bool)
    if tolerance > 0:
        r = ndimage.distance_transform_edt(~r) <= tolerance
    return float(np.any(r & (s == s.max())))


def energy_in_box(saliency: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's positive mass inside the region, in [0, 1]; HIGHER is better."""
    s = np.clip(np.asarray(saliency, np.float64), 0.0, None)
    total = s.sum()
    return float(s[np.asarray(region, bool)].sum() / total) if total > 0 else 0.0


def sparsity(saliency: np.ndarray) -> float:
    """Gini index of |map| in [0, 1] (Chalasani et al. 2020): 0 for a constant map, near 1 when
    one point holds all the mass; HIGHER is better (a more concise explanation)."""
    a = np.sort(np.abs(np.asarray(saliency, np.float64)).ravel())
    n = a.size
    if n < 2 or a.sum() == 0:
        return 0.0
    k = np.arange(1, n + 1)
    return float(((2 * k - n - 1) * a).sum() / (n * a.sum()))


# --------------------------------------------------------------------------- sanity check


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps; NaN when either is constant."""
    ra, rb = rankdata(np.ravel(a)), rankdata(np.ravel(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def layers(model: onnx.ModelProto) -> list[tuple[str, list[str]]]:
    """(node name, its float weight initializers) top first: nodes in reverse graph order that
    read an initializer with more than one float element (scalars are constants, not weights)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for i, node in enumerate(reversed(model.graph.node)):
        names = [n for n in dict.fromkeys(node.input) if n in inits
                 and inits[n].data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                            onnx.TensorProto.FLOAT16)
                 and int(np.prod(inits[n].dims)) > 1]
        if names:
            out.append((node.name or f"{node.op_type}#{len(model.graph.node) - 1 - i}", names))
    return out


def randomized_models(model: onnx.ModelProto, seed: int = 0,
                      limit: int | None = None) -> Iterator[tuple[str, onnx.ModelProto]]:
    """Cascading randomisation (Adebayo et al. 2018): yield (layer, model) with the top 1, 2,
    ... layers' weights redrawn from a normal with each tensor's own mean and std (absolute
    values where the tensor was all positive, e.g. BatchNorm variances)."""
    rng = np.random.default_rng(seed)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    index = {t.name: i for i, t in enumerate(m.graph.initializer)}
    done: set[str] = set()
    for name, weights in layers(model)[:limit]:
        for w in weights:
            if w in done:
                continue
            done.add(w)
            t = m.graph.initializer[index[w]]
            old = numpy_helper.to_array(t).astype(np.float64)
            new = rng.normal(old.mean(), old.std() or 1.0, old.shape)
            if old.min() > 0:
                new = np.abs(new)
            t.CopyFrom(numpy_helper.from_array(new.astype(numpy_helper.to_array(t).dtype), w))
        copy = onnx.ModelProto()
        copy.CopyFrom(m)
        yield name, copy


@dataclass(frozen=True)
class SanityRow:
    layer: str
    """The last layer randomised (all layers above it are randomised too)."""
    spearman: float
    """Rank correlation with the original map; near 0 is better (the map depends on the
    weights), near 1 means the method ignores the model."""


def randomization_check(model: onnx.ModelProto,
                        explain: Callable[[onnx.ModelProto], np.ndarray], *, seed: int = 0,
                        limit: int | None = None, absolute: bool = False) -> list[SanityRow]:
    """Model-randomisation sanity check: |Spearman| of original vs randomised maps, LOWER is
    better. `explain(model)` returns a map for the fixed input and target."""
    ref = explain(model)
    f = np.abs if absolute else np.asarray
    return [SanityRow(layer, spearman(f(ref), f(explain(m))))
            for layer, m in randomized_models(model, seed, limit)]


# --------------------------------------------------------------------------- the table

METRICS: dict[str, str] = {
    "deletion_auc": "lower",
    "insertion_auc": "higher",
    "insertion_minus_deletion": "higher",
    "sparsity": "higher",
    "pointing_game": "higher",
    "energy_in_box": "higher",
    "randomization_spearman": "lower",
}
"""Metric name -> which direction is better ("higher" or "lower")."""


def evaluate(clf: Classifier, x: np.ndarray, target: int, saliency: np.ndarray, *,
             steps: int = 50, baseline: Removal = "zero", insertion_baseline: Removal = "blur",
             region: np.ndarray | None = None, seed: int = 0,
             ) -> tuple[dict[str, float], Curve, Curve]:
    """Every per-map metric of one map (the sanity check needs the method, not a map)."""
    d = deletion(clf, x, target, saliency, steps=steps, baseline=baseline, seed=seed)
    i = insertion(clf, x, target, saliency, steps=steps, baseline=insertion_baseline, seed=seed)
    scores = {"deletion_auc": d.auc, "insertion_auc": i.auc,
              "insertion_minus_deletion": i.auc - d.auc, "sparsity": sparsity(saliency)}
    if region is not None:
        r = region_mask(np.shape(saliency), region)
        scores["pointing_game"] = pointing_game(saliency, r)
        scores["energy_in_box"] = energy_in_box(saliency, r)
    return scores, d, i


PROTOCOLS: dict[str, tuple[Removal, Removal]] = {"A": ("zero", "blur"), "B": ("blur", "zero")}
"""Scoring protocol -> (deletion substrate, insertion substrate). A is RISE's (deletion to
zero = the mean colour in normalised space, insertion from a blur); B swaps the substrates,
so a map fitted to one way of removing pixels shows it."""


def self_check(clf: Classifier, x: np.ndarray, target: int, saliency: np.ndarray, *,
               steps: int = 50, seed: int = 0) -> dict[str, float]:
    """Deletion and insertion AUC of one map under both protocols, and their differences:
    `A_deletion_auc`, `A_insertion_auc`, `A_insertion_minus_deletion`, then the same for B.
    4 (steps + 1) forward passes."""
    out: dict[str, float] = {}
    for name, (d, i) in PROTOCOLS.items():
        dele = deletion(clf, x, target, saliency, steps=steps, baseline=d, seed=seed).auc
        ins = insertion(clf, x, target, saliency, steps=steps, baseline=i, seed=seed).auc
        out[f"{name}_deletion_auc"] = dele
        out[f"{name}_insertion_auc"] = ins
        out[f"{name}_insertion_minus_deletion"] = ins - dele
    return out
