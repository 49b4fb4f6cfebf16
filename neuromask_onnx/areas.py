"""The default NeuroMask objective: nested target areas, each mask kept and deleted at once.

For one (input, target) job the optimiser holds K coarse mask weights W_k, one per target area
a_k (`config.areas`, e.g. 5, 12, 25 and 50 % of the input). Each step is ONE batched model run
of up to 2K rows: row (k, preserve) shows the model b + M_k (x - b), row (k, delete) shows
b + (1 - M_k) (x - b), with M_k = up(sigmoid(W_k / T)) and the substrate b taken in turn from
`config.substrates` (blur, the mean colour, ...), so the mask is not fitted to one way of
removing pixels. The loss of area k is

    -f(p_t(kept)) + f(p_t(deleted))                    prediction (f = p or log p)
    + lambda_sp * mean((sort(sigmoid(W_k / T)) - r_k)^2)   area: the sorted mask is held at
                                                       a step profile r_k with a fraction a_k
                                                       of ones (Fong et al.'s extremal area)
    + lambda_sm * Laplacian energy of sigmoid(W_k / T) (reflect-padded: the border too)

so the sparsity term of NeuroMask becomes a fixed area (a weight that carries over between
images and models), and the explanation is the mean of the K masks: a graded map that ranks
the input from the smallest sufficient region outwards, which is what deletion and insertion
curves score. The instrumented model's objective is the target probability; log p and the
signs are applied here (d log p = dp / p).

The masks live on coarse cells (14 per axis), so inside a cell, and across the background
where every mask is off, their mean has no order. Every step's run also returns the gradient
of the objective with respect to the FULL-resolution mask, (x - b) * d p / d x at the masked
input, for free; summed over the steps (a path over the masks and the substrates, much as
Integrated Gradients sums over a straight path) it is the `detail` that `with_detail` adds to
the mean at `config.detail_weight`: the masks' order holds wherever they differ by more than
the weight, and the detail ranks the pixels inside their plateaus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

from .optimize import NeuroMaskConfig
from .smoothness import smoothness

RowRunner = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
"""(masks [R, *mask_shape], substrate index) -> (p_target [R], d p_target / d mask)."""

LOG_FLOOR = 1e-6
"""log p is taken of max(p, LOG_FLOOR): a deleted row's p may underflow."""


def area_profile(n: int, area: float) -> np.ndarray:
    """The sorted (ascending) mask of exactly `area` * n ones: r_a."""
    r = np.zeros(n, np.float32)
    ones = round(area * n)
    if ones:
        r[n - ones:] = 1.0
    return r


TIE = 1e-6
"""Mask values closer than this are tied for the area term."""


def area_term(s: np.ndarray, profiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mean((sort(s_i) - r_i)^2) per row of s [N, n] and its gradient (Fong et al. 2019).

    Tied values share the mean of their stretch of the profile: from the uniform start
    (W = 0) a plain sort would hand the ones of r to the last cells in memory order, and the
    area term alone would paint the bottom rows of every mask on."""
    order = np.argsort(s, axis=1, kind="stable")
    sv = np.take_along_axis(s, order, axis=1)
    target = np.empty_like(profiles)
    for i in range(len(s)):
        group = np.concatenate([[0], np.cumsum(np.diff(sv[i]) > TIE)])
        means = np.bincount(group, weights=profiles[i]) / np.bincount(group)
        target[i] = means[group]
    diff = sv - target
    energy = np.mean(diff * diff, axis=1)
    grad = np.empty_like(s)
    np.put_along_axis(grad, order, (2.0 / s.shape[1]) * diff, axis=1)
    return energy.astype(s.dtype), grad


@dataclass
class AreasObjective:
    """`fun(w) -> (loss [J*K], grad)` for the optimiser; w is [J*K, *coarse] (job-major).

    `upsample(v, adjoint)` maps coarse [N, *coarse] to full [N, *mask_shape] and back.
    """

    config: NeuroMaskConfig
    jobs: int
    run_rows: RowRunner
    upsample: Callable[[np.ndarray, bool], np.ndarray]
    kernel: np.ndarray | None
    calls: int = 0
    last: dict[str, np.ndarray] = field(default_factory=dict)
    detail: np.ndarray | None = None
    """Sum over the steps of -d objective / d mask at full resolution, per job [J, *mask]."""

    def __post_init__(self) -> None:
        c = self.config
        self.k = len(c.areas)
        self.halves: Sequence[str] = ("preserve", "delete") if c.halves == "both" else (c.halves,)
        self.inv_t = np.float32(1.0 / c.temperature)

    def rows_per_job(self) -> int:
        return self.k * len(self.halves)

    def __call__(self, w: np.ndarray, substrate: int | None = None) -> tuple[np.ndarray,
                                                                             np.ndarray]:
        c, f32 = self.config, np.float32
        n = w.shape[0]
        which = self.calls % len(c.substrates) if substrate is None else substrate
        if c.temperature_end > 0:
            # geometric from T to T_end over the steps: soft masks early (gradients flow),
            # near-binary at the end (as deletion and insertion score them)
            frac = min(self.calls / max(c.steps - 1, 1), 1.0)
            self.inv_t = f32(1.0 / (c.temperature * (c.temperature_end / c.temperature) ** frac))
        s = expit(w * self.inv_t).astype(f32)
        m = self.upsample(s, False)  # [J*K, *mask_shape]
        parts = [m if h == "preserve" else f32(1.0) - m for h in self.halves]
        rows = np.stack(parts, axis=1).reshape(n * len(parts), *m.shape[1:])
        self.calls += 1
        p, gp = self.run_rows(rows, which)
        p = p.reshape(n, len(parts)).astype(f32)
        gp = gp.reshape(n, len(parts), *m.shape[1:]).astype(f32)
        pred = np.zeros(n, f32)
        gm = np.zeros_like(m)
        for i, h in enumerate(self.halves):
            sign = f32(-1.0) if h == "preserve" else f32(1.0)  # keep p up / push p down
            pi = p[:, i]
            if c.pred_loss == "log":
                safe = np.maximum(pi, f32(LOG_FLOOR))
                val, dval = np.log(safe), np.where(pi > LOG_FLOOR, f32(1.0) / safe, f32(0.0))
            else:
                val, dval = pi, np.ones_like(pi)
            pred += sign * val
            # d mask_row / d M is +1 for the kept row and -1 for the deleted one
            dm = sign * (f32(1.0) if h == "preserve" else f32(-1.0))
            gm += (dm * dval).reshape(-1, *[1] * (m.ndim - 1)) * gp[:, i]
        if c.detail_weight > 0:
            step = -gm.reshape(self.jobs, self.k, *m.shape[1:]).sum(axis=1)
            self.detail = step if self.detail is None else self.detail + step
        gs = self.upsample(gm, True) * f32(c.pred_weight)
        flat = s.reshape(n, -1)
        if c.area_penalty == "mean":
            goal = np.array([c.areas[i % self.k] for i in range(n)], f32)
            gap = flat.mean(axis=1) - goal
            area = gap * gap
            garea = np.broadcast_to((2.0 * gap / flat.shape[1])[:, None], flat.shape)
        else:
            profiles = np.stack([area_profile(flat.shape[1], c.areas[i % self.k])
                                 for i in range(n)])
            area, garea = area_term(flat, profiles)
        gs += f32(c.sparse_weight) * garea.reshape(s.shape)
        if self.kernel is not None and c.smooth_weight > 0:
            sm, gsm = smoothness(s, self.kernel, c.smooth_norm, c.smooth_reduce,
                                 c.smooth_padding)
            gs += f32(c.smooth_weight) * gsm
        else:
            sm = np.zeros(n, f32)
        gw = gs * s * (f32(1.0) - s) * self.inv_t
        total = f32(c.pred_weight) * pred + f32(c.sparse_weight) * area \
            + f32(c.smooth_weight) * sm
        self.last = {"total": total, "pred": pred, "sparse": area, "smooth": sm, "mask": m,
                     "p": p}
        return total, gw.astype(f32)

    def job_map(self, j: int) -> np.ndarray:
        """The explanation of job j at the last evaluated weights: the mean of its masks."""
        out: np.ndarray = self.last["mask"][j * self.k:(j + 1) * self.k].mean(axis=0)
        return out


def with_detail(mask: np.ndarray, detail: np.ndarray, weight: float, sigma: float,
                ) -> np.ndarray:
    """mask + weight * d, d = the detail (smoothed by `sigma` pixels) scaled to [-1/2, 1/2] by
    its largest magnitude, then stretched to [0, 1]. Where the masks' mean differs by more
    than the weight the masks' order holds; inside a plateau of the masks (a cell, or the
    whole background) the detail ranks the pixels."""
    if sigma > 0:
        from scipy.ndimage import gaussian_filter

        detail = gaussian_filter(detail.astype(np.float64), sigma, mode="reflect")
    scale = float(np.abs(detail).max())
    v = mask + (0.5 * weight / scale) * detail if scale > 0 else mask.astype(np.float64)
    lo, hi = float(v.min()), float(v.max())
    return ((v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)).astype(np.float32)


def prior_weights(config: NeuroMaskConfig, prior: np.ndarray) -> np.ndarray:
    """W0 for one job's K masks from a coarse prior map [*coarse] (higher = keep): area k
    starts on where the standardised prior is above its (1 - a_k) quantile."""
    z = (prior - prior.mean()) / max(float(prior.std()), 1e-12)
    return np.stack([config.prior_scale * (z - np.quantile(z, 1.0 - a))
                     for a in config.areas]).astype(np.float32)


def init_weights(config: NeuroMaskConfig, coarse: tuple[int, ...], restart: int) -> np.ndarray:
    """W0 for one job's K masks: zeros, or U(-tau, tau) seeded by (seed, restart, area)."""
    k = len(config.areas)
    if config.init in ("zero", "prior"):
        return np.zeros((k, *coarse), np.float32)
    return np.stack([np.random.default_rng([config.seed, restart, i]).uniform(
        -config.tau, config.tau, coarse).astype(np.float32) for i in range(k)])
