"""Baseline methods: gradients against finite differences on the fixture models; occlusion
against its definition; RISE and SmoothGrad reproducible with a seed."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from neuromask_onnx import baselines as bl
from neuromask_onnx.errors import ConvergenceWarning, InputError
from neuromask_onnx.optimize import NeuroMaskConfig

MODELS = Path(__file__).resolve().parent.parent / "models"
FIXTURES = {"cnn_nchw": (3, 32, 32), "cnn_nhwc_tf": (32, 32, 3), "tabular_mlp": (12,),
            "tiny_vit": (3, 16, 16), "timeseries_conv1d": (24, 4)}


def _score(clf: bl.Classifier, x: np.ndarray, target: int) -> np.ndarray:
    return clf.gradient(x, target)[0]


def _fd(f, x: np.ndarray, u: np.ndarray, eps: float = 3e-3) -> float:  # type: ignore[no-untyped-def]
    """Central difference along u, scaled to a step of norm eps (few ReLU kinks crossed)."""
    n = float(np.linalg.norm(u))
    h = eps / n
    return float((f(x + h * u) - f(x - h * u)) / (2 * h))


def _close(got: float, want: float, scale: float) -> None:
    """Agreement up to float32 finite-difference noise: 3% or 1e-3 of the gradient's norm."""
    assert got == pytest.approx(want, rel=3e-2, abs=1e-3 * scale + 1e-5)


@pytest.fixture(scope="module", params=sorted(FIXTURES))
def case(request: pytest.FixtureRequest) -> tuple[bl.Classifier, np.ndarray]:
    rng = np.random.default_rng(7)
    clf = bl.Classifier(MODELS / f"{request.param}.onnx")
    return clf, rng.uniform(-1, 1, FIXTURES[request.param]).astype(np.float32)


def test_input_gradient_matches_fd(case, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    clf, x = case
    for objective in ("logit", "probability"):
        _, g = clf.gradient(x[None], 1, objective)
        u = rng.standard_normal(x.shape)

        def f(z: np.ndarray, objective: str = objective) -> float:
            return float(clf.gradient(z[None].astype(np.float32), 1, objective)[0][0])  # type: ignore[arg-type]

        fd = _fd(f, x.astype(np.float64), u)
        _close(float((u * g[0]).sum()), fd, float(np.linalg.norm(g) * np.linalg.norm(u)))
        assert np.abs(g).max() > 0, objective


def test_smoothgrad_is_gradient_of_the_noisy_mean(case, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    clf, x = case
    g = bl.smoothgrad_gradient(clf, x, 1, samples=8, noise=0.1, seed=5)
    noise = np.random.default_rng(5).standard_normal((8, *x.shape)) * 0.1 * float(np.ptp(x))

    def f(z: np.ndarray) -> float:
        return float(_score(clf, (z[None] + noise).astype(np.float32), 1).mean())

    u = rng.standard_normal(x.shape)
    _close(float((u * g).sum()), _fd(f, x, u), float(np.linalg.norm(g) * np.linalg.norm(u)))
    again = bl.smoothgrad_gradient(clf, x, 1, samples=8, noise=0.1, seed=5)
    np.testing.assert_array_equal(g, again)
    assert not np.array_equal(g, bl.smoothgrad_gradient(clf, x, 1, samples=8, noise=0.1, seed=6))


def test_integrated_gradients(case) -> None:  # type: ignore[no-untyped-def]
    clf, x = case
    # one step: (x - 0) * grad at x / 2, checked against finite differences at x / 2
    ig1 = bl.integrated_gradients_raw(clf, x, 1, steps=1)
    u = x.astype(np.float64)  # <x, grad(x/2)> = d/dt score(x/2 + t x)
    fd = _fd(lambda z: float(_score(clf, z[None].astype(np.float32), 1)[0]), x / 2, u)
    _close(float(ig1.sum()), fd, float(np.abs(ig1).sum()))
    # completeness: sum IG = score(x) - score(0), closely with many steps
    ig = bl.integrated_gradients_raw(clf, x, 1, steps=64)
    diff = _score(clf, np.stack([x, np.zeros_like(x)]), 1)
    assert float(ig.sum()) == pytest.approx(diff[0] - diff[1], rel=2e-2, abs=5e-3)


def test_maps_on_tabular_match_full_fd() -> None:
    clf = bl.Classifier(MODELS / "tabular_mlp.onnx")
    x = np.random.default_rng(3).uniform(-1, 1, 12).astype(np.float32)
    eye = np.eye(12) * 1e-2
    s = _score(clf, np.concatenate([x + eye, x - eye]).astype(np.float32), 1)
    fd = (s[:12] - s[12:]) / 2e-2
    np.testing.assert_allclose(bl.saliency(clf, x, 1), np.abs(fd), rtol=2e-2, atol=2e-4)
    np.testing.assert_allclose(bl.gradient_x_input(clf, x, 1), x * fd, rtol=2e-2, atol=2e-4)


def test_occlusion_is_the_probability_drop() -> None:
    clf = bl.Classifier(MODELS / "cnn_nchw.onnx")
    x = np.random.default_rng(4).uniform(-1, 1, (3, 32, 32)).astype(np.float32)
    occ = bl.occlusion(clf, x, 3, window=4, stride=4)  # windows tile the image exactly
    p0 = clf.probs(x[None])[0, 3]
    for y, xx in [(0, 0), (12, 20), (28, 28)]:
        z = x.copy()
        z[:, y:y + 4, xx:xx + 4] = 0.0
        want = p0 - clf.probs(z[None])[0, 3]
        np.testing.assert_allclose(occ[y:y + 4, xx:xx + 4], want, rtol=1e-4, atol=1e-6)
    overlap = bl.occlusion(clf, x, 3, window=8, stride=3)  # the last window is flush right
    assert overlap.shape == (32, 32)
    assert np.all(overlap != 0) or np.count_nonzero(overlap) > 1000
    np.testing.assert_array_equal(overlap, bl.occlusion(clf, x, 3, window=8, stride=3))
    with pytest.raises(InputError, match="window"):
        bl.occlusion(clf, x, 3, window=0)


def test_rise_reproducible_with_seed() -> None:
    clf = bl.Classifier(MODELS / "legacy_opset9.onnx")  # fixed batch 1: padded chunks
    x = np.random.default_rng(5).uniform(-1, 1, (3, 16, 16)).astype(np.float32)
    a = bl.rise(clf, x, 1, masks=24, cells=4, seed=11, chunk=8)
    np.testing.assert_array_equal(a, bl.rise(clf, x, 1, masks=24, cells=4, seed=11, chunk=8))
    assert not np.array_equal(a, bl.rise(clf, x, 1, masks=24, cells=4, seed=12, chunk=8))
    # the definition, with the masks drawn from the same generator
    m = bl.rise_masks((16, 16), 8, 4, 0.5, np.random.default_rng(11))
    p = clf.probs((x[None] * m[:, None]).astype(np.float32))[:, 1]
    want = np.tensordot(p, m, axes=(0, 0)) / (8 * 0.5)
    np.testing.assert_allclose(bl.rise(clf, x, 1, masks=8, cells=4, seed=11), want, rtol=1e-5)
    assert m.min() >= 0
    assert m.max() <= 1
    assert 0.3 < m.mean() < 0.7


def test_registry_and_neuromask() -> None:
    assert set(bl.METHODS) == {"neuromask", "saliency", "gradient_x_input", "smoothgrad",
                               "integrated_gradients", "occlusion", "rise"}
    clf = bl.Classifier(MODELS / "region_cnn.onnx")
    x = np.full((3, 32, 32), 0.8, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m, secs = bl.run_method("neuromask", clf, x, 0, seed=1,
                                config=NeuroMaskConfig(steps=3))
    assert m.shape == (32, 32)
    assert secs > 0
    assert 0 <= m.min() <= m.max() <= 1
    for name in bl.METHODS:
        if name != "neuromask":
            out, _ = bl.run_method(name, clf, x, 0)
            assert out.shape == (32, 32)
            assert out.dtype == np.float32
            assert np.isfinite(out).all()
    with pytest.raises(InputError, match="out of range"):
        bl.saliency(clf, x, 3)
    with pytest.raises(InputError, match="unknown method"):
        bl.run_method("gradcam", clf, x, 0)
