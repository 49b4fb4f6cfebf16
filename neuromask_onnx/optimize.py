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
Upsample = Literal["bilinear", "nearest"]


@dataclass(frozen=True)
class NeuroMaskConfig:
    """NeuroMask hyperparameters. Defaults are the authors' ImageNet code (`reference`)."""

    steps: int = 1000
    """Maximum number of RMSProp steps (one model run each)."""
    learning_rate: float = 0.03
    """RMSProp step size."""
    decay: float = 0.9
    """RMSProp decay of the mean-square accumulator."""
    epsilon: float = 1e-10
    """RMSProp epsilon, added inside the square root (TF1)."""
    momentum: float = 0.0
    """RMSProp momentum (TF1 form; the reference uses 0)."""
    temperature: float = 0.3
    """T in m = sigmoid(W / T); the paper uses 1."""
    tau: float = 10.0
    """Initial range W0 ~ U(-tau, tau) and the sparsity offset |W + tau|."""
    pred_weight: float = 0.4
    """lambda_p, weight of the cross-entropy of the masked prediction."""
    sparse_weight: float = 0.35
    """lambda_sp, weight of the sparsity term."""
    smooth_weight: float = 0.03
    """lambda_sm, weight of the Laplacian smoothness term."""
    sparse_reduce: Literal["sum", "mean"] = "mean"
    """Sparsity |W + tau| summed (paper) or averaged over the mask (code)."""
    smooth_norm: Literal["l1", "squared"] = "squared"
    """Norm of the Laplacian: L1 (paper) or squares (code)."""
    smooth_reduce: Literal["sum", "mean"] = "mean"
    """Smoothness summed (paper) or averaged over the VALID outputs (code)."""
    laplacian_size: int = 5
    """Laplacian filter size: 3 (3x3, centre 8; the code's CIFAR) or 5 (5x5, centre 24)."""
    tolerance: float = 0.0
    """Early stop when the loss moved less than this (relative) over `patience` steps; 0: off."""
    patience: int = 50
    """Window in steps for the early-stopping test."""
    baseline: Baseline = "zero"
    """What a masked-out pixel becomes: zero (paper), blur, mean (per channel) or noise."""
    blur_sigma: float = 10.0
    """Gaussian sigma, in input pixels, of the `blur` baseline."""
    noise_std: float = 1.0
    """`noise` baseline: channel mean + noise_std * channel std * N(0, 1), fixed per run."""
    mask_scale: int = 1
    """Mask resolution = input resolution / mask_scale (rounded up), then upsampled."""
    upsample: Upsample = "bilinear"
    """How a coarse mask is brought to the input resolution."""
    restarts: int = 1
    """Independent random starts per (input, target); the lowest final loss wins."""
    seed: int = 0
    """Seed of W0 (and of the noise baseline); CPU runs repeat to the bit."""

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.steps >= 1, "steps must be at least 1"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (0 <= self.decay < 1, "decay must be in [0, 1)"),
            (self.epsilon > 0, "epsilon must be positive"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (self.temperature > 0, "temperature must be positive"),
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
            (self.upsample in ("bilinear", "nearest"), "upsample must be bilinear or nearest"),
            (self.restarts >= 1, "restarts must be at least 1"),
            (0 <= self.seed < 2**63, "seed must be a non-negative integer"),
        ]
        for ok, what in checks:
            if not ok:
                msg = f"bad NeuroMask config: {what}"
                raise InputError(msg)

    def replace(self, **changes: Any) -> NeuroMaskConfig:
        """A copy with some fields changed (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# 'paper' gives no loss weights; these are the code's ImageNet weights rescaled so that the
# paper's sums over a 299 x 299 Inception-v3 mask weigh what the code's means weigh.
_PAPER_PIXELS = 299 * 299
# 'default' was chosen by measurement with tools/tune_defaults.py, on the pretrained ImageNet
# EfficientNet-Lite0 ONLY (13 scikit-image photographs, top-1 class, best mean insertion AUC -
# deletion AUC): the reference weights with 150 steps, learning rate 0.3, a mask at 1/4 of the
# input resolution (bilinear upsampling) and the blur baseline. The search and its table:
# tools/tune_defaults.py. Other models may want other settings; 'reference' is the authors' code.
PRESETS: dict[str, NeuroMaskConfig] = {
    "default": NeuroMaskConfig(steps=150, learning_rate=0.3, mask_scale=4, baseline="blur"),
    "reference": NeuroMaskConfig(),
    "reference-cifar": NeuroMaskConfig(pred_weight=50.0, sparse_weight=16.0, smooth_weight=3.0,
                                       laplacian_size=3),
    "paper": NeuroMaskConfig(
        steps=600, temperature=1.0, tau=20.0, pred_weight=0.4,
        sparse_weight=0.35 / _PAPER_PIXELS, smooth_weight=0.03 / _PAPER_PIXELS,
        sparse_reduce="sum", smooth_norm="l1", smooth_reduce="sum", laplacian_size=5),
}


def preset(name: str) -> NeuroMaskConfig:
    """A named config: default (tuned on EfficientNet-Lite0 by tools/tune_defaults.py),
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
             callback: Callable[[StepInfo], None] | None = None) -> OptimizeResult:
    """Minimise the per-sample losses `fun(w) -> (loss [N], grad)` from w0 [N, ...]."""
    w = np.array(w0, copy=True)
    n = w.shape[0]
    state = RMSPropState.like(w)
    active = np.ones(n, bool)
    ran = np.zeros(n, np.int64)
    history: list[np.ndarray] = []
    early = np.zeros(n, bool)
    for step in range(steps):
        loss, grad = fun(w)
        loss = np.asarray(loss).reshape(n)
        history.append(loss.copy())
        ran[active] += 1
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
