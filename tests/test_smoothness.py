"""Smoothness and sparsity terms: values by hand, gradients against central differences."""

from __future__ import annotations

import numpy as np
import pytest

from neuromask_onnx.smoothness import laplacian, laplacian_kernel, smoothness, sparsity


def test_kernels_match_the_reference_code() -> None:
    k3 = laplacian_kernel(3)
    assert k3[1, 1] == 8
    assert (k3.sum(), k3.min(), k3.shape) == (0, -1, (3, 3))
    k5 = laplacian_kernel(5)
    assert k5[2, 2] == 24
    assert (k5.sum(), k5.min(), k5.shape) == (0, -1, (5, 5))
    assert laplacian_kernel(3, 1).tolist() == [-1, 2, -1]
    with pytest.raises(ValueError, match="3 or 5"):
        laplacian_kernel(4)


def test_laplacian_is_valid_and_zero_on_constants(rng: np.random.Generator) -> None:
    w = rng.standard_normal((2, 9, 11))
    lap = laplacian(w, laplacian_kernel(5))
    assert lap.shape == (2, 5, 7)  # VALID: 9 - 4, 11 - 4
    # one output by hand: the centre times 24 minus its 24 neighbours
    patch = w[1, 2:7, 3:8]
    assert lap[1, 2, 3] == pytest.approx(25 * patch[2, 2] - patch.sum())
    flat = np.full((1, 8, 8), 3.7)
    assert np.abs(laplacian(flat, laplacian_kernel(3))).max() < 1e-12


def _fd_check(f, w: np.ndarray, grad: np.ndarray, rng: np.random.Generator) -> None:
    u = rng.standard_normal(w.shape)
    eps = 1e-6
    fd = (f(w + eps * u).sum() - f(w - eps * u).sum()) / (2 * eps)
    assert np.sum(grad * u) == pytest.approx(fd, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("norm", ["l1", "squared"])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_smoothness_gradient_matches_finite_differences(
        size: int, norm: str, reduce: str, rng: np.random.Generator) -> None:
    w = rng.standard_normal((3, 12, 10))
    k = laplacian_kernel(size)
    energy, grad = smoothness(w, k, norm, reduce)  # type: ignore[arg-type]
    assert energy.shape == (3,)
    assert grad.shape == w.shape
    lap = laplacian(w, k)
    want = np.abs(lap) if norm == "l1" else lap**2
    want = want.sum(axis=(1, 2)) / (lap[0].size if reduce == "mean" else 1)
    np.testing.assert_allclose(energy, want, rtol=1e-12)
    _fd_check(lambda v: smoothness(v, k, norm, reduce)[0], w, grad, rng)  # type: ignore[arg-type]


def test_smoothness_1d_gradient(rng: np.random.Generator) -> None:
    w = rng.standard_normal((2, 30))
    k = laplacian_kernel(5, 1)
    _, grad = smoothness(w, k, "squared", "mean")
    _fd_check(lambda v: smoothness(v, k, "squared", "mean")[0], w, grad, rng)


def test_mask_smaller_than_filter_has_no_energy() -> None:
    energy, grad = smoothness(np.ones((1, 3, 3)), laplacian_kernel(5))
    assert energy.tolist() == [0.0]
    assert not grad.any()


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_sparsity_value_and_gradient(reduce: str, rng: np.random.Generator) -> None:
    w = rng.uniform(-10, 10, (2, 6, 7))
    energy, grad = sparsity(w, 10.0, reduce)  # type: ignore[arg-type]
    want = np.abs(w + 10).sum(axis=(1, 2)) / (42 if reduce == "mean" else 1)
    np.testing.assert_allclose(energy, want, rtol=1e-12)
    _fd_check(lambda v: sparsity(v, 10.0, reduce)[0], w, grad, rng)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("norm", ["l1", "squared"])
def test_reflect_padded_smoothness_covers_the_border(size: int, norm: str,
                                                     rng: np.random.Generator) -> None:
    """With reflect padding every cell is a Laplacian centre (the border too), and the
    gradient, through the padding's adjoint, matches central differences."""
    w = rng.standard_normal((2, 9, 8))
    k = laplacian_kernel(size)
    energy, grad = smoothness(w, k, norm, "mean", "reflect")  # type: ignore[arg-type]
    r = size // 2
    padded = np.pad(w, ((0, 0), (r, r), (r, r)), mode="reflect")
    lap = laplacian(padded, k)
    assert lap.shape == w.shape
    want = (np.abs(lap) if norm == "l1" else lap**2).mean(axis=(1, 2))
    np.testing.assert_allclose(energy, want, rtol=1e-12)
    _fd_check(lambda v: smoothness(v, k, norm, "mean", "reflect")[0], w, grad,  # type: ignore[arg-type]
              rng)
    # a bright border cell costs energy under reflect padding, and none under VALID with a
    # 5x5 kernel when it is a corner the kernel never centres on
    spike = np.zeros((1, 9, 8))
    spike[0, 0, 0] = 1.0
    assert smoothness(spike, k, "squared", "sum", "reflect")[0][0] > \
        smoothness(spike, k, "squared", "sum", "valid")[0][0]
