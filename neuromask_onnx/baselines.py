"""The methods users already know, on the exact deployed ONNX model and onnxruntime alone.

`Classifier` resolves the model's contract once (`contract.resolve`) and wraps it in two kinds
of session, both built by `rewrite.instrument(..., wrt="input")`: a gradient session (`nm_grad_input` = d score / d input, the score being the
target logit by default) and a forward-only one (the same graph with the gradient pruned away)
that gives class probabilities. Gradient methods (saliency, gradient x input, SmoothGrad,
Integrated Gradients) read the first; perturbation methods (occlusion, RISE) and the metrics
read the second, so every method and every score sees the same model, head and softmax.

Every method returns one map over the mask axes (e.g. [H, W] for images; the same axes a
NeuroMask mask has), float32, higher = more important for the target. Unsigned methods
(saliency, SmoothGrad) take max |g| over the other axes (Simonyan et al.); signed ones
(gradient x input, IG) sum over them. Random methods take a `seed` and repeat exactly.
`METHODS` maps the CLI names to the functions, "neuromask" included.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from .contract import ModelOptions, Spec, decide, dynamic_shape
from .errors import InputError
from .explain import NeuroMask, by_shape
from .graph import load_model, prune
from .heads import Objective
from .io_names import GRAD_INPUT, LOSS, PROBS, TARGET
from .mask import upsample, upsample_matrix
from .optimize import NeuroMaskConfig
from .rewrite import instrument
from .runtime import available_provider, run_padded, session


class Classifier:
    """One ONNX classifier on onnxruntime: probabilities and input gradients of batches.

    Args:
        model: an ONNX model or a path (never modified).
        input_name / output_name / output_kind / layout / mask_axes: as in `instrument`.
        provider: "auto", "cpu" or "cuda". batch_size: samples per session run (a model with
        a fixed batch axis uses its own). threads: onnxruntime intra-op threads.
        input_shape: one input's shape without the batch axis, for models whose non-batch
        dims are dynamic. spec: a `contract.resolve` result, instead of the arguments above.
    """

    def __init__(self, model: onnx.ModelProto | str | Path, *, input_name: str | None = None,
                 output_name: str | None = None, output_kind: str = "auto",
                 layout: str | None = None, mask_axes: Sequence[int] | None = None,
                 provider: str = "auto", batch_size: int = 64,
                 threads: int | None = None, input_shape: Sequence[int] | None = None,
                 spec: Spec | None = None) -> None:
        if batch_size < 1:
            msg = f"batch size must be at least 1, got {batch_size}"
            raise InputError(msg)
        self.model = load_model(model)
        self.provider = available_provider(provider)  # type: ignore[arg-type]
        self.batch_size = batch_size
        self.threads = threads
        # Every decision about the model, made once; dynamic non-batch dims are resolved at
        # `input_shape`, and each input shape gets its own session later.
        if spec is None:
            opts = ModelOptions(input_name, output_name, output_kind,  # type: ignore[arg-type]
                                layout, None if mask_axes is None else tuple(mask_axes))
            spec = decide(self.model, opts,
                          input_shape=dynamic_shape(self.model, input_name, input_shape))
        self.spec = spec
        self.input_shape = spec.input_shape[1:] if spec.dynamic else None
        self.input_name = spec.input_name
        self.num_classes = spec.classes
        self.mask_axes = spec.mask_axes
        self.dims = spec.dims
        self.fixed_batch = spec.fixed_batch
        self._sessions: dict[tuple[Any, ...], ort.InferenceSession] = {}
        self._neuromask: dict[NeuroMaskConfig, NeuroMask] = {}
        self.model_runs = 0
        """Samples run through the model so far (padding included)."""

    def _instrument(self, batch: int, shape: tuple[int, ...] | None,
                    objective: Objective) -> onnx.ModelProto:
        return instrument(self.model, spec=self.spec, batch_size=batch, input_shape=shape,
                          objective=objective, wrt="input")

    def _session(self, kind: str, batch: int, shape: tuple[int, ...]) -> ort.InferenceSession:
        key = (kind, batch, shape)
        if key not in self._sessions:
            dynamic = any(d is None for d in self.dims[1:])
            objective = "logit" if kind == "probs" else kind
            m = self._instrument(batch, shape if dynamic else None, objective)  # type: ignore[arg-type]
            if kind == "probs":  # forward only: drop the gradient and the nodes only it needs
                keep = [o for o in m.graph.output if o.name != GRAD_INPUT]
                nodes = prune(list(m.graph.node), [o.name for o in keep])
                read = {i for n in nodes for i in n.input}
                inits = [t for t in m.graph.initializer if t.name in read]
                del m.graph.output[:], m.graph.node[:], m.graph.initializer[:]
                m.graph.output.extend(keep)
                m.graph.node.extend(nodes)
                m.graph.initializer.extend(inits)
            self._sessions[key] = session(m, self.provider, threads=self.threads)
        return self._sessions[key]

    def _run(self, kind: str, x: np.ndarray, target: np.ndarray) -> list[np.ndarray]:
        size = self.fixed_batch or min(self.batch_size, max(len(x), 1))
        shape = tuple(x.shape[1:])
        names = [PROBS] if kind == "probs" else [LOSS, GRAD_INPUT]

        def run(parts: list[np.ndarray], n: int) -> list[np.ndarray]:
            part, t = parts
            res = self._session(kind, size, shape).run(
                names, {self.input_name: np.ascontiguousarray(part, np.float32),
                        TARGET: t.astype(np.int64)})
            self.model_runs += size
            return [r[:n] for r in res]

        # every chunk runs at `size` rows (the last padded), so one session serves them all
        return run_padded(run, [x, target], size, pad=True)

    def probs(self, x: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities [N, K] (float64) of inputs x [N, ...], or of a list of inputs
        that may differ in shape where the model's dims are dynamic."""
        if not isinstance(x, np.ndarray):
            xs = [np.asarray(a) for a in x]
            groups = by_shape(xs)
            if len(groups) > 1:
                out = np.zeros((len(xs), self.num_classes))
                for idx in groups.values():
                    out[idx] = self.probs(np.stack([xs[i] for i in idx]))
                return out
            x = np.stack(xs)
        (p,) = self._run("probs", np.asarray(x), np.zeros(len(x), np.int64))
        return p.astype(np.float64)

    def gradient(self, x: np.ndarray, target: int | np.ndarray,
                 objective: Objective = "logit") -> tuple[np.ndarray, np.ndarray]:
        """(score [N], d score / d x [N, ...]) where score is the target's logit (default),
        probability or cross-entropy."""
        x = np.asarray(x)
        t = np.broadcast_to(np.asarray(target, np.int64), (len(x),))
        if t.size and not (t.min() >= 0 and t.max() < self.num_classes):
            msg = f"target class out of range: the model has {self.num_classes} classes"
            raise InputError(msg)
        score, grad = self._run(objective, x, np.ascontiguousarray(t))
        return score.astype(np.float64), grad.astype(np.float64)

    def mask_shape(self, x: np.ndarray) -> tuple[int, ...]:
        """The shape of a map for one input x (no batch axis): x's sizes on the mask axes."""
        return tuple(x.shape[a - 1] for a in self.mask_axes)

    def to_map(self, a: np.ndarray, signed: bool) -> np.ndarray:
        """Reduce an input-shaped attribution (no batch axis) to the mask axes."""
        other = tuple(i for i in range(a.ndim) if i + 1 not in self.mask_axes)
        out = a.sum(axis=other) if signed else np.abs(a).max(axis=other) if other else np.abs(a)
        return np.asarray(out, np.float32)

    def neuromask(self, config: NeuroMaskConfig) -> NeuroMask:
        if config not in self._neuromask:
            self._neuromask[config] = NeuroMask(
                self.model, config, spec=self.spec,
                provider="cuda" if self.provider == "CUDAExecutionProvider" else "cpu",
                batch_size=1, threads=self.threads)
        return self._neuromask[config]


# --------------------------------------------------------------------------- gradient methods


def saliency(clf: Classifier, x: np.ndarray, target: int, *,
             objective: Objective = "logit") -> np.ndarray:
    """Vanilla gradient (Simonyan et al. 2014): max over channels of |d score / d x|."""
    _, g = clf.gradient(x[None], target, objective)
    return clf.to_map(g[0], signed=False)


def gradient_x_input(clf: Classifier, x: np.ndarray, target: int, *,
                     objective: Objective = "logit") -> np.ndarray:
    """x * d score / d x, summed over channels (signed)."""
    _, g = clf.gradient(x[None], target, objective)
    return clf.to_map(x * g[0], signed=True)


def smoothgrad_gradient(clf: Classifier, x: np.ndarray, target: int, *, samples: int = 16,
                        noise: float = 0.15, seed: int = 0,
                        objective: Objective = "logit") -> np.ndarray:
    """Mean gradient over x + N(0, (noise * (max x - min x))^2), input-shaped (one batch)."""
    if samples < 1:
        msg = f"SmoothGrad needs at least 1 sample, got {samples}"
        raise InputError(msg)
    sigma = noise * float(np.ptp(x))
    eps = np.random.default_rng(seed).standard_normal((samples, *x.shape)) * sigma
    _, g = clf.gradient((x[None] + eps).astype(np.float32), target, objective)
    out: np.ndarray = g.mean(axis=0)
    return out


def smoothgrad(clf: Classifier, x: np.ndarray, target: int, *, samples: int = 16,
               noise: float = 0.15, seed: int = 0, objective: Objective = "logit") -> np.ndarray:
    """SmoothGrad (Smilkov et al. 2017): saliency of the mean gradient over noisy copies."""
    g = smoothgrad_gradient(clf, x, target, samples=samples, noise=noise, seed=seed,
                            objective=objective)
    return clf.to_map(g, signed=False)


def integrated_gradients_raw(clf: Classifier, x: np.ndarray, target: int, *, steps: int = 32,
                             baseline: np.ndarray | None = None,
                             objective: Objective = "logit") -> np.ndarray:
    """(x - b) * mean gradient at the midpoints b + (k + 1/2)/steps (x - b), input-shaped.

    Sums to about score(x) - score(b) (completeness), closer as steps grow.
    """
    if steps < 1:
        msg = f"Integrated Gradients needs at least 1 step, got {steps}"
        raise InputError(msg)
    b = np.zeros_like(x) if baseline is None else np.asarray(baseline, x.dtype)
    alphas = (np.arange(steps) + 0.5) / steps
    path = b[None] + alphas.reshape(-1, *([1] * x.ndim)) * (x - b)[None]
    _, g = clf.gradient(path.astype(np.float32), target, objective)
    out: np.ndarray = (x - b) * g.mean(axis=0)
    return out


def integrated_gradients(clf: Classifier, x: np.ndarray, target: int, *, steps: int = 32,
                         baseline: np.ndarray | None = None,
                         objective: Objective = "logit") -> np.ndarray:
    """Integrated Gradients (Sundararajan et al. 2017), zero baseline, summed over channels."""
    a = integrated_gradients_raw(clf, x, target, steps=steps, baseline=baseline,
                                 objective=objective)
    return clf.to_map(a, signed=True)


# --------------------------------------------------------------------------- perturbation


def _expand(clf: Classifier, masks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Masks [N, *mask_shape] -> [N, *x.shape] broadcastable (size 1 off the mask axes)."""
    shape = [len(masks)] + [x.shape[i - 1] if i in clf.mask_axes else 1
                            for i in range(1, x.ndim + 1)]
    return masks.reshape(shape)


def occlusion(clf: Classifier, x: np.ndarray, target: int, *, window: int = 8,
              stride: int = 4, fill: float = 0.0) -> np.ndarray:
    """Occlusion (Zeiler & Fergus 2014): the drop in target probability when a window of
    `window` (per mask axis) is set to `fill`, averaged over the windows covering each point.
    All windows of one input run as one batch (chunked by the classifier's batch size)."""
    if window < 1 or stride < 1:
        msg = f"occlusion window and stride must be at least 1, got {window} and {stride}"
        raise InputError(msg)
    ms = clf.mask_shape(x)
    starts = [sorted(set(range(0, max(s - window, 0) + 1, stride)) | {max(s - window, 0)})
              for s in ms]
    corners = list(itertools.product(*starts))
    keep = np.ones((len(corners), *ms), np.float32)
    for i, c in enumerate(corners):
        hole: tuple[Any, ...] = (i, *(slice(a, a + window) for a in c))
        keep[hole] = 0.0
    k = _expand(clf, keep, x)
    xs = (fill + k * (x[None] - fill)).astype(np.float32)
    p0 = clf.probs(x[None])[0, target]
    drop = p0 - clf.probs(xs)[:, target]
    holes = 1.0 - keep
    total = np.tensordot(drop, holes, axes=(0, 0))
    count = holes.sum(axis=0)
    out: np.ndarray = np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)
    return out


def rise_masks(shape: tuple[int, ...], n: int, cells: int, p_keep: float,
               rng: np.random.Generator) -> np.ndarray:
    """RISE masks [n, *shape]: a random binary grid of `cells` per axis, bilinearly upsampled
    to (cells + 1) cell widths and cropped at a random shift (Petsiuk et al. 2018)."""
    grid = (rng.random((n, *([cells] * len(shape)))) < p_keep).astype(np.float32)
    sizes = [-(-s // cells) * (cells + 1) for s in shape]
    mats = [upsample_matrix(u, cells, "bilinear") for u in sizes]
    big = upsample(mats, grid)
    out = np.empty((n, *shape), np.float32)
    for i in range(n):
        shift = [int(rng.integers(0, -(-s // cells))) for s in shape]
        crop: tuple[Any, ...] = (i, *(slice(d, d + s) for d, s in zip(shift, shape, strict=True)))
        out[i] = big[crop]
    return out


def rise(clf: Classifier, x: np.ndarray, target: int, *, masks: int = 256, cells: int = 7,
         p_keep: float = 0.5, seed: int = 0, chunk: int = 64) -> np.ndarray:
    """RISE (Petsiuk et al. 2018): sum_i p_target(x * M_i) M_i / (masks * p_keep).

    Masks are drawn `chunk` at a time from one seeded generator, so memory stays bounded and
    the same seed gives the same map whatever the chunk size."""
    if masks < 1 or cells < 1 or not 0 < p_keep <= 1:
        msg = f"RISE needs masks >= 1, cells >= 1 and 0 < p_keep <= 1; got {masks}, {cells}, " \
              f"{p_keep}"
        raise InputError(msg)
    ms = clf.mask_shape(x)
    rng = np.random.default_rng(seed)
    acc = np.zeros(ms, np.float64)
    for lo in range(0, masks, chunk):
        m = rise_masks(ms, min(chunk, masks - lo), cells, p_keep, rng)
        p = clf.probs((x[None] * _expand(clf, m, x)).astype(np.float32))[:, target]
        acc += np.tensordot(p, m, axes=(0, 0))
    out: np.ndarray = (acc / (masks * p_keep)).astype(np.float32)
    return out


def neuromask(clf: Classifier, x: np.ndarray, target: int, *, seed: int = 0,
              config: NeuroMaskConfig | None = None) -> np.ndarray:
    """NeuroMask through the existing explainer (`explain.NeuroMask`)."""
    cfg = (config or NeuroMaskConfig()).replace(seed=seed)
    ex = clf.neuromask(cfg).attribute(x, target)
    assert not isinstance(ex, list)
    return np.asarray(ex.mask, np.float32).reshape(clf.mask_shape(x))


Method = Callable[..., np.ndarray]

METHODS: dict[str, Method] = {
    "neuromask": neuromask,
    "saliency": saliency,
    "gradient_x_input": gradient_x_input,
    "smoothgrad": smoothgrad,
    "integrated_gradients": integrated_gradients,
    "occlusion": occlusion,
    "rise": rise,
}
"""Name -> fn(classifier, x, target, **options) returning a map over the mask axes."""

SEEDED = frozenset({"neuromask", "smoothgrad", "rise"})


def run_method(name: str, clf: Classifier, x: np.ndarray, target: int, *, seed: int = 0,
               **options: Any) -> tuple[np.ndarray, float]:
    """(map, seconds) of one registered method on one input (no batch axis)."""
    if name not in METHODS:
        msg = f"unknown method {name!r}; choose from {', '.join(METHODS)}"
        raise InputError(msg)
    if name in SEEDED:
        options["seed"] = seed
    t0 = time.perf_counter()
    out = METHODS[name](clf, np.asarray(x, np.float32), target, **options)
    return out, time.perf_counter() - t0
