"""The smoothness and sparsity terms of NeuroMask and their gradients, in numpy and scipy.

Both act on the mask weights W (not on the mask sigmoid(W / T)), one sample per leading index:
W has shape [N, *S] with S the mask's spatial shape (1-D for sequences, 2-D for images).

Smoothness is a norm of the Laplacian W * f_s taken with a 'VALID' correlation (no padding,
as the authors' TensorFlow code does; the outer cells then enter only as neighbours, so
nothing smooths them: the border band of the reference maps) or, with `padding="reflect"`, of
W reflected about its border first, so every cell is a centre once (the default preset). The filters
are -1 everywhere and the centre makes the sum zero: 3x3 (centre 8), 5x5 (centre 24); in 1-D
[-1, 2, -1] and [-1, -1, 4, -1, -1]. The adjoint of a VALID correlation is a FULL convolution,
which gives the gradient exactly. `norm` "l1" is sum |L| (the paper); "squared" is sum L^2 (the
code); `reduce` "mean" divides by the number of VALID outputs. At a kink |0| the L1 gradient
is 0 (numpy's sign).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import signal

Norm = Literal["l1", "squared"]
Reduce = Literal["sum", "mean"]


def laplacian_kernel(size: int, ndim: int = 2) -> np.ndarray:
    """The discrete Laplacian f_s: -1 around, a centre that makes the kernel sum to zero."""
    if size not in (3, 5):
        msg = f"Laplacian size must be 3 or 5, got {size}"
        raise ValueError(msg)
    if ndim not in (1, 2, 3):
        msg = f"Laplacian is defined for 1 to 3 mask axes, got {ndim}"
        raise ValueError(msg)
    k = -np.ones((size,) * ndim, np.float64)
    k[(size // 2,) * ndim] = size**ndim - 1
    return k


def laplacian(w: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """VALID correlation of every sample of w [N, *S] with `kernel` (ndim = len(S))."""
    k = kernel.reshape((1, *kernel.shape))
    if any(s < d for s, d in zip(w.shape[1:], kernel.shape, strict=True)):
        return np.zeros((w.shape[0], *(0 for _ in kernel.shape)), w.dtype)
    out: np.ndarray = signal.correlate(w, k.astype(w.dtype), mode="valid", method="auto")
    return out


def _reflect_index(shape: tuple[int, ...], r: int) -> np.ndarray:
    """Flat source index of every cell of the reflect-padded array (for the adjoint)."""
    idx: np.ndarray = np.pad(np.arange(int(np.prod(shape))).reshape(shape), r, mode="reflect")
    return idx


def smoothness(w: np.ndarray, kernel: np.ndarray, norm: Norm = "squared",
               reduce: Reduce = "mean", padding: Literal["valid", "reflect"] = "valid",
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample energy [N] and its gradient d energy / d w (the shape of w)."""
    r = kernel.shape[0] // 2
    if padding == "reflect" and all(s > r for s in w.shape[1:]):
        idx = _reflect_index(w.shape[1:], r)
        flat = w.reshape(w.shape[0], -1)
        energy, gpad = smoothness(flat[:, idx], kernel, norm, reduce, "valid")
        n = flat.shape[1]
        grad = np.stack([np.bincount(idx.ravel(), weights=g.ravel(), minlength=n)
                         for g in gpad]).reshape(w.shape)
        return energy, grad.astype(w.dtype)
    lap = laplacian(w, kernel)
    count = int(np.prod(lap.shape[1:]))
    if count == 0:  # mask smaller than the filter: no VALID output, no energy
        return np.zeros(w.shape[0], w.dtype), np.zeros_like(w)
    axes = tuple(range(1, lap.ndim))
    if norm == "l1":
        energy = np.abs(lap).sum(axis=axes)
        dlap = np.sign(lap)
    elif norm == "squared":
        energy = np.square(lap).sum(axis=axes)
        dlap = 2.0 * lap
    else:
        msg = f"smoothness norm must be 'l1' or 'squared', got {norm!r}"
        raise ValueError(msg)
    if reduce == "mean":
        energy = energy / count
        dlap = dlap / count
    elif reduce != "sum":
        msg = f"reduce must be 'sum' or 'mean', got {reduce!r}"
        raise ValueError(msg)
    # adjoint of VALID correlation = FULL convolution with the same kernel
    k = kernel.reshape((1, *kernel.shape)).astype(w.dtype)
    grad = signal.convolve(dlap.astype(w.dtype), k, mode="full", method="auto")
    return energy.astype(w.dtype), grad.astype(w.dtype)


def sparsity(w: np.ndarray, tau: float, reduce: Reduce = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Per-sample L1 of (W + tau) [N] and its gradient; pushes W to -tau (mask off)."""
    axes = tuple(range(1, w.ndim))
    shifted = w + w.dtype.type(tau)
    energy = np.abs(shifted).sum(axis=axes)
    grad = np.sign(shifted)
    if reduce == "mean":
        count = int(np.prod(w.shape[1:]))
        energy = energy / count
        grad = grad / count
    elif reduce != "sum":
        msg = f"reduce must be 'sum' or 'mean', got {reduce!r}"
        raise ValueError(msg)
    return energy.astype(w.dtype), grad.astype(w.dtype)
