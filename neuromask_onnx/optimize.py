"""Every NeuroMask hyperparameter in one frozen config, and the numpy RMSProp loop.

The optimiser is a plain function over a batch of independent problems: `fun(w)` returns one
loss per sample and the gradient, `optimize` runs RMSProp with TensorFlow 1 semantics (what the
authors' code used; see DESIGN.md section 2):

    ms  <- decay * ms + (1 - decay) * g^2          ms starts at 1, not 0
    mom <- momentum * mom + lr * g / sqrt(ms + eps)  eps inside the root
    w   <- w - mom

PyTorch's RMSprop starts ms at 0 and puts eps outside the root, which makes the first steps
far larger; do not "fix" this. Early stopping is per sample, so a batch converges exactly as
its samples would one by one: a sample whose loss moved less than `tolerance` (relative) over
the last `patience` steps is frozen and the loop ends when all are frozen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .errors import InputError

Baseline = Literal["zero", "blur", "mean", "noise"]
Upsample = Literal["bilinear", "nearest", "smooth"]
Mode = Literal["areas", "classic"]
Halves = Literal["both", "preserve", "delete"]


@dataclass(frozen=True)
class NeuroMaskConfig:
    """NeuroMask hyperparameters. Defaults are the tuned `default` preset (mode "areas", see
    `areas`); `preset("reference")` is the authors' ImageNet code, `preset("paper")` the paper.
    """

    mode: Mode = "areas"
    """"areas" (default): nested target areas, each mask kept and deleted in one batch
    (`areas` module); "classic": the paper's single mask with cross-entropy, L1 sparsity and
    Laplacian smoothness (the reference and paper presets)."""
    steps: int = 20
    """Maximum number of optimiser steps (one batched model run each)."""
    learning_rate: float = 0.2
    """Step size of the optimiser."""
    optimizer: Literal["adam", "rmsprop"] = "adam"
    """Adam (default) or RMSProp with TensorFlow 1 semantics (the reference)."""
    decay: float = 0.9
    """RMSProp decay of the mean-square accumulator."""
    beta1: float = 0.9
    """Adam's first-moment decay."""
    beta2: float = 0.999
    """Adam's second-moment decay."""
    epsilon: float = 1e-10
    """RMSProp epsilon, inside the square root (TF1); Adam's epsilon, outside it."""
    momentum: float = 0.0
    """RMSProp momentum (TF1 form; the reference uses 0)."""
    temperature: float = 0.25
    """T in m = sigmoid(W / T); the authors' code uses 0.3, the paper 1."""
    temperature_end: float = 0.0
    """areas mode: if > 0, T falls geometrically from `temperature` to this over the steps
    (0: T stays constant)."""
    tau: float = 10.0
    """Initial range W0 ~ U(-tau, tau) (`init` uniform) and the sparsity offset |W + tau|."""
    init: Literal["prior", "zero", "uniform"] = "zero"
    """W0: prior (areas mode: each area's mask starts as that area's top of one gradient pass,
    d p / d mask at m = 1, smoothed to the mask's cells; one extra model row per job), zero
    (m = 0.5 everywhere) or U(-tau, tau) (the code)."""
    prior_scale: float = 2.0
    """init prior: W0 = prior_scale * (z - z_a), z the standardised prior, z_a its quantile
    at 1 - a, so each mask starts with about its area on."""
    pred_weight: float = 1.0
    """lambda_p, weight of the prediction term."""
    sparse_weight: float = 10.0
    """lambda_sp: classic, weight of the L1 term |W + tau|; areas, weight of the area term
    mean((sort(m) - r_a)^2) that holds each mask at its target area a."""
    smooth_weight: float = 0.003
    """lambda_sm, weight of the Laplacian smoothness term (on W in classic mode, on the mask
    in areas mode)."""
    sparse_reduce: Literal["sum", "mean"] = "mean"
    """Sparsity |W + tau| summed (paper) or averaged over the mask (code)."""
    smooth_norm: Literal["l1", "squared"] = "squared"
    """Norm of the Laplacian: L1 (paper) or squares (code)."""
    smooth_reduce: Literal["sum", "mean"] = "mean"
    """Smoothness summed (paper) or averaged over the Laplacian's outputs (code)."""
    smooth_padding: Literal["reflect", "valid"] = "reflect"
    """reflect: the Laplacian covers the border cells too; valid: only interior cells (the
    code; leaves the outer cells unregularised)."""
    laplacian_size: int = 5
    """Laplacian filter size: 3 (3x3, centre 8; the code's CIFAR) or 5 (5x5, centre 24)."""
    tolerance: float = 0.0
    """Early stop when the loss moved less than this (relative) over `patience` steps; 0: off."""
    patience: int = 50
    """Window in steps for the early-stopping test."""
    baseline: Baseline = "zero"
    """classic mode: what a masked-out pixel becomes: zero (paper), blur, mean (per channel)
    or noise."""
    substrates: tuple[Baseline, ...] = ("blur", "zero")
    """areas mode: the masked-out values, one per step in turn, so the mask is not fitted to
    one substrate (zero = the dataset mean colour in normalised space)."""
    areas: tuple[float, ...] = (0.05, 0.12, 0.25, 0.5)
    """areas mode: target fractions of the input that the nested masks keep; the map is the
    mean of the masks, so it ranks the input from the smallest area outwards."""
    area_penalty: Literal["sorted", "mean"] = "mean"
    """areas mode: how the area is held: sorted = the whole sorted mask is pulled to the step
    profile r_a (a near-binary mask of area a); mean = only the mask's mean is pulled to a
    (the pattern is left to the prediction term)."""
    halves: Halves = "both"
    """areas mode: both = each mask must keep the class (preserve) and its complement must
    lose it (delete); or one of the two."""
    pred_loss: Literal["probability", "log"] = "probability"
    """areas mode: the prediction term on the target probability p: -p(kept) + p(deleted),
    or -log p(kept) + log p(deleted)."""
    blur_sigma: float = 10.0
    """Gaussian sigma, in input pixels, of the `blur` baseline."""
    noise_std: float = 1.0
    """`noise` baseline: channel mean + noise_std * channel std * N(0, 1), fixed per run."""
    mask_scale: int = 1
    """Mask resolution = input resolution / mask_scale (rounded up), then upsampled (when
    `mask_cells` is 0)."""
    mask_cells: int = 14
    """Mask resolution: this many cells along each mask axis (fewer where the input is
    smaller), whatever the input's size; 0: use `mask_scale`."""
    upsample: Upsample = "smooth"
    """How a coarse mask is brought to the input resolution: smooth (Gaussian interpolation,
    no grid), bilinear or nearest."""
    detail_weight: float = 1.0
    """areas mode: weight of the pixel detail in the map. The masks live on coarse cells; the
    gradient of the objective with respect to the full-resolution mask, summed over the steps
    (the same model runs, none extra), ranks the pixels inside a cell and across the
    background: map = mean of masks + w * d, d the detail scaled to [-1/2, 1/2], the sum
    stretched to [0, 1] (0: the mean of the masks alone)."""
    detail_sigma: float = 2.0
    """Gaussian sigma, in input pixels, that the detail is smoothed with (0: none)."""
    restarts: int = 1
    """Independent random starts per (input, target); the lowest final loss wins."""
    seed: int = 0
    """Seed of W0 (and of the noise baseline); CPU runs repeat to the bit."""

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.mode in ("areas", "classic"), "mode must be areas or classic"),
            (self.steps >= 1, "steps must be at least 1"),
            (self.optimizer in ("adam", "rmsprop"), "optimizer must be adam or rmsprop"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 must be in [0, 1)"),
            (self.init in ("prior", "zero", "uniform"), "init must be prior, zero or uniform"),
            (self.prior_scale > 0, "prior_scale must be positive"),
            (self.mode == "areas" or self.init != "prior", "init prior needs mode areas"),
            (self.smooth_padding in ("reflect", "valid"), "smooth_padding must be reflect or valid"),
            (len(self.substrates) >= 1 and all(b in ("zero", "blur", "mean", "noise")
                                               for b in self.substrates),
             "substrates must be a non-empty list of zero, blur, mean, noise"),
            (len(self.areas) >= 1 and all(0 < a < 1 for a in self.areas),
             "areas must be a non-empty list of fractions in (0, 1)"),
            (self.halves in ("both", "preserve", "delete"), "halves must be both, preserve or delete"),
            (self.pred_loss in ("probability", "log"), "pred_loss must be probability or log"),
            (self.area_penalty in ("sorted", "mean"), "area_penalty must be sorted or mean"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (0 <= self.decay < 1, "decay must be in [0, 1)"),
            (self.epsilon > 0, "epsilon must be positive"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (self.temperature > 0, "temperature must be positive"),
            (self.temperature_end >= 0, "temperature_end must be 0 (constant T) or positive"),
            (self.tau > 0, "tau must be positive"),
            (min(self.pred_weight, self.sparse_weight, self.smooth_weight) >= 0,
             "loss weights must be non-negative"),
            (self.pred_weight > 0, "pred_weight must be positive (the mask needs the model)"),
            (self.sparse_reduce in ("sum", "mean"), "sparse_reduce must be sum or mean"),
            (self.smooth_norm in ("l1", "squared"), "smooth_norm must be l1 or squared"),
            (self.smooth_reduce in ("sum", "mean"), "smooth_reduce must be sum or mean"),
            (self.laplacian_size in (3, 5), "laplacian_size must be 3 or 5"),
            (self.tolerance >= 0, "tolerance must be non-negative"),
            (self.patience >= 1, "patience must be at least 1"),
            (self.baseline in ("zero", "blur", "mean", "noise"),
             "baseline must be zero, blur, mean or noise"),
            (self.blur_sigma > 0, "blur_sigma must be positive"),
            (self.noise_std >= 0, "noise_std must be non-negative"),
            (self.mask_scale >= 1, "mask_scale must be at least 1"),
            (self.mask_cells >= 0, "mask_cells must be non-negative"),
            (self.upsample in ("bilinear", "nearest", "smooth"),
             "upsample must be smooth, bilinear or nearest"),
            (self.detail_weight >= 0 and self.detail_sigma >= 0,
             "detail_weight and detail_sigma must be non-negative"),
            (self.restarts >= 1, "restarts must be at least 1"),
            (0 <= self.seed < 2**63, "seed must be a non-negative integer"),
        ]
        for ok, what in checks:
            if not ok:
                msg = f"bad NeuroMask config: {what}"
                raise InputError(msg)

    def coarse_shape(self, full: tuple[int, ...]) -> tuple[int, ...]:
        """The mask weights' shape for a mask of shape `full` at the input's resolution."""
        if self.mask_cells:
            return tuple(min(s, self.mask_cells) for s in full)
        return tuple(-(-s // self.mask_scale) for s in full)

    def replace(self, **changes: Any) -> NeuroMaskConfig:
        """A copy with some fields changed (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# 'paper' gives no loss weights; these are the code's ImageNet weights rescaled so that the
# paper's sums over a 299 x 299 Inception-v3 mask weigh what the code's means weigh.
_PAPER_PIXELS = 299 * 299
# The authors' ImageNet code (DESIGN.md section 2), every field spelled out: the defaults of
# NeuroMaskConfig are the tuned 'default' preset, and these must not move with them.
_REFERENCE = NeuroMaskConfig(
    mode="classic", steps=1000, learning_rate=0.03, optimizer="rmsprop", decay=0.9,
    epsilon=1e-10, momentum=0.0, temperature=0.3, tau=10.0, init="uniform", pred_weight=0.4,
    sparse_weight=0.35, smooth_weight=0.03, sparse_reduce="mean", smooth_norm="squared",
    smooth_reduce="mean", smooth_padding="valid", laplacian_size=5, baseline="zero",
    mask_scale=1, mask_cells=0, upsample="bilinear", detail_weight=0.0)
# 'default' = NeuroMaskConfig(): chosen by measurement with tools/evaluate_methods.py, tuned on
# the tuning half of the photographs with the pretrained EfficientNet-Lite0 ONLY, and reported
# on the test half and on EfficientNet-Lite2 (README, "Faithfulness").
PRESETS: dict[str, NeuroMaskConfig] = {
    "default": NeuroMaskConfig(),
    "reference": _REFERENCE,
    "reference-cifar": _REFERENCE.replace(pred_weight=50.0, sparse_weight=16.0,
                                          smooth_weight=3.0, laplacian_size=3),
    "paper": _REFERENCE.replace(
        steps=600, temperature=1.0, tau=20.0, pred_weight=0.4,
        sparse_weight=0.35 / _PAPER_PIXELS, smooth_weight=0.03 / _PAPER_PIXELS,
        sparse_reduce="sum", smooth_norm="l1", smooth_reduce="sum", laplacian_size=5),
}


def preset(name: str) -> NeuroMaskConfig:
    """A named config: default (= NeuroMaskConfig(), tuned by tools/evaluate_methods.py),
    reference (the authors' ImageNet code), reference-cifar or paper."""
    try:
        return PRESETS[name]
    except KeyError:
        msg = f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}"
        raise InputError(msg) from None


# --------------------------------------------------------------------------- RMSProp


@dataclass
class RMSPropState:
    """Mean-square accumulator (starts at 1, TF1) and momentum buffer (starts at 0)."""

    ms: np.ndarray
    mom: np.ndarray

    @classmethod
    def like(cls, w: np.ndarray) -> RMSPropState:
        return cls(np.ones_like(w), np.zeros_like(w))


def rmsprop_step(w: np.ndarray, g: np.ndarray, state: RMSPropState, *, learning_rate: float,
                 decay: float, epsilon: float, momentum: float = 0.0) -> np.ndarray:
    """One TF1 RMSProp update; returns the new w and updates `state` in place."""
    t = w.dtype.type
    state.ms = t(decay) * state.ms + t(1.0 - decay) * (g * g)
    state.mom = t(momentum) * state.mom + t(learning_rate) * g / np.sqrt(state.ms + t(epsilon))
    out: np.ndarray = w - state.mom
    return out


@dataclass
class AdamState:
    """Adam's moment estimates (start at 0) and step count, for the bias correction."""

    m: np.ndarray
    v: np.ndarray
    t: int = 0

    @classmethod
    def like(cls, w: np.ndarray) -> AdamState:
        return cls(np.zeros_like(w), np.zeros_like(w))


def adam_step(w: np.ndarray, g: np.ndarray, state: AdamState, *, learning_rate: float,
              beta1: float, beta2: float, epsilon: float) -> np.ndarray:
    """One Adam update (Kingma & Ba 2015, epsilon outside the root); updates `state`."""
    t = w.dtype.type
    state.t += 1
    state.m = t(beta1) * state.m + t(1.0 - beta1) * g
    state.v = t(beta2) * state.v + t(1.0 - beta2) * (g * g)
    mhat = state.m / t(1.0 - beta1**state.t)
    vhat = state.v / t(1.0 - beta2**state.t)
    out: np.ndarray = w - t(learning_rate) * mhat / (np.sqrt(vhat) + t(epsilon))
    return out


@dataclass(frozen=True)
class StepInfo:
    """What the callback sees after each step."""

    step: int
    """Steps done so far (1-based)."""
    total: int
    loss: np.ndarray
    """Loss [N] at the weights before this step's update."""
    active: np.ndarray
    """bool [N]: samples still being optimised."""


@dataclass(frozen=True)
class OptimizeResult:
    w: np.ndarray
    losses: list[np.ndarray]
    """Per sample: the loss at every evaluated point (one per step it ran)."""
    steps: np.ndarray
    """Per sample: steps run before it stopped."""
    stopped_early: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)


LossFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def optimize(fun: LossFn, w0: np.ndarray, *, steps: int, learning_rate: float, decay: float,
             epsilon: float, momentum: float = 0.0, tolerance: float = 0.0, patience: int = 50,
             callback: Callable[[StepInfo], None] | None = None, method: str = "rmsprop",
             beta1: float = 0.9, beta2: float = 0.999) -> OptimizeResult:
    """Minimise the per-sample losses `fun(w) -> (loss [N], grad)` from w0 [N, ...] with
    RMSProp (TF1, the default) or Adam (`method="adam"`)."""
    w = np.array(w0, copy=True)
    n = w.shape[0]
    state = RMSPropState.like(w)
    adam = AdamState.like(w)
    active = np.ones(n, bool)
    ran = np.zeros(n, np.int64)
    history: list[np.ndarray] = []
    early = np.zeros(n, bool)
    for step in range(steps):
        loss, grad = fun(w)
        loss = np.asarray(loss).reshape(n)
        history.append(loss.copy())
        ran[active] += 1
        if method == "adam":
            new = adam_step(w, grad, adam, learning_rate=learning_rate, beta1=beta1,
                            beta2=beta2, epsilon=epsilon)
        else:
            new = rmsprop_step(w, grad, state, learning_rate=learning_rate, decay=decay,
                               epsilon=epsilon, momentum=momentum)
        keep = active.reshape((n,) + (1,) * (w.ndim - 1))
        w = np.where(keep, new, w)
        if tolerance > 0 and len(history) > patience:
            before, now = history[-1 - patience], history[-1]
            done = np.abs(now - before) <= tolerance * np.maximum(1.0, np.abs(before))
            early |= active & done
            active &= ~done
        if callback is not None:
            callback(StepInfo(step + 1, steps, loss, active.copy()))
        if not active.any():
            break
    table = np.stack(history)
    losses = [table[: ran[i], i].copy() for i in range(n)]
    return OptimizeResult(w, losses, ran, early)
