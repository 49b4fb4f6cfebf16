"""Masks and what a masked-out point becomes: upsampling, its adjoint, the baselines.

NeuroMask optimises a coarse mask and the model sees it upsampled to the input's resolution:
one linear map per mask axis (`upsample_matrix`), applied by `upsample` and, for the gradient,
transposed by `apply(..., adjoint=True)`. A batch of masks is [N, *mask axes]: axis 0 is the
batch and matrix i acts on axis i + 1; None leaves an axis as it is.

`masked_out` is the one definition of the values a masked-out (or removed) point takes: zero,
a Gaussian blur over the mask axes, the mean over the mask axes, or that mean plus seeded
noise. The explainer (`explain`) and the deletion / insertion scores (`metrics`) both use it,
each passing its own blur sigma and mean accumulator, so neither's numbers move.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import InputError

SMOOTH_SIGMA = 0.6
"""Width, in coarse cells, of the Gaussian that `smooth` upsampling interpolates with."""

BASELINES = ("zero", "blur", "mean", "noise")
_NOISE_TAG = 0x6E6F697365  # 'noise': the noise field depends on the seed alone


def upsample_matrix(n_out: int, n_in: int, kind: str) -> np.ndarray:
    """A [n_out, n_in] linear map: bilinear with half-pixel centres (torch's
    align_corners=False), nearest (torch's 'nearest') or smooth: normalised Gaussian weights
    of the coarse cells around each output's centre (infinitely smooth, so no grid shows;
    the rows sum to 1, so the border is not darkened)."""
    a = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    if kind == "smooth" and n_in > 1:
        src = (rows + 0.5) * n_in / n_out - 0.5
        wts = np.exp(-0.5 * ((src[:, None] - np.arange(n_in)[None]) / SMOOTH_SIGMA) ** 2)
        out: np.ndarray = (wts / wts.sum(axis=1, keepdims=True)).astype(np.float32)
        return out
    if kind == "nearest" or n_in == 1:
        a[rows, np.minimum((rows * n_in) // n_out, n_in - 1)] = 1.0
        return a
    src = np.clip((rows + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (src - i0).astype(np.float32)
    np.add.at(a, (rows, i0), 1.0 - frac)
    np.add.at(a, (rows, i1), frac)
    return a


def apply(mats: Sequence[np.ndarray | None], v: np.ndarray, adjoint: bool) -> np.ndarray:
    """Apply one matrix per mask axis (axis 0 is the batch): the upsampling or its adjoint."""
    for ax, a in enumerate(mats, start=1):
        if a is None:
            continue
        m = a.T if adjoint else a
        v = np.moveaxis(np.tensordot(m, np.moveaxis(v, ax, 0), axes=(1, 0)), 0, ax)
    return v


def upsample(mats: Sequence[np.ndarray | None], v: np.ndarray) -> np.ndarray:
    """Coarse masks [N, *coarse] to the input's resolution [N, *full]."""
    return apply(mats, v, adjoint=False)


def masked_out(x: np.ndarray, kind: str, axes: Sequence[int], *, blur_sigma: float,
               noise_std: float = 0.0, seed: int = 0,
               mean_dtype: Any = np.float64) -> np.ndarray:
    """The value each point of x takes where the mask is off, shaped and typed like x.

    kind: zero, blur (a Gaussian of `blur_sigma` points over `axes`, reflected at the border,
    computed in float32), mean (the mean over `axes`, accumulated in `mean_dtype`; None is
    numpy's default, the input's float type) or noise (that mean + noise_std * std * N(0, 1),
    one field per seed, the same for every row of x). `axes` index x itself: with a batch
    axis in front, the model's mask axes; for one input, those minus one.
    """
    axes = tuple(axes)
    if kind == "zero":
        return np.zeros_like(x)
    if kind == "blur":
        sigma = [blur_sigma if a in axes else 0.0 for a in range(x.ndim)]
        blurred: np.ndarray = ndimage.gaussian_filter(x.astype(np.float32), sigma,
                                                      mode="reflect")
        return blurred.astype(x.dtype)
    if kind not in BASELINES:
        msg = f"baseline must be one of {', '.join(BASELINES)}, got {kind!r}"
        raise InputError(msg)
    mean = x.mean(axis=axes, keepdims=True, dtype=mean_dtype)
    if kind == "mean":
        flat: np.ndarray = np.broadcast_to(mean, x.shape).astype(x.dtype)
        return flat
    std = x.std(axis=axes, keepdims=True, dtype=mean_dtype)
    rng = np.random.default_rng([seed, _NOISE_TAG])
    noise = rng.standard_normal(x.shape[1:])[None]
    noisy: np.ndarray = (mean + noise_std * std * noise).astype(x.dtype)
    return noisy
