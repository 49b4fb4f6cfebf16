"""The default objective's numpy parts: the area term, Adam and the smooth upsampling."""

from __future__ import annotations

import numpy as np
import pytest

from neuromask_onnx.areas import area_profile, area_term
from neuromask_onnx.mask import apply, upsample_matrix
from neuromask_onnx.optimize import AdamState, adam_step, optimize


def test_area_profile_has_the_area_in_ones() -> None:
    r = area_profile(200, 0.05)
    assert r.sum() == 10
    assert np.all(np.diff(r) >= 0)  # ascending, as sort() returns


def test_area_term_gradient_matches_finite_differences(rng: np.random.Generator) -> None:
    s = rng.uniform(0, 1, (3, 50))  # distinct values: the sort is locally constant
    prof = np.stack([area_profile(50, a) for a in (0.1, 0.3, 0.5)])
    e, g = area_term(s, prof)
    u = rng.standard_normal(s.shape)
    eps = 1e-7
    fd = (area_term(s + eps * u, prof)[0].sum() - area_term(s - eps * u, prof)[0].sum()) / (
        2 * eps)
    assert np.sum(g * u) == pytest.approx(fd, rel=1e-6)
    np.testing.assert_allclose(e, np.mean((np.sort(s, axis=1) - prof) ** 2, axis=1))


def test_area_term_treats_ties_alike() -> None:
    """From the uniform start no cell is preferred: memory order must not decide."""
    s = np.full((1, 16), 0.5)
    _, g = area_term(s, area_profile(16, 0.25)[None])
    assert np.ptp(g) == 0.0


def test_adam_matches_the_textbook_update() -> None:
    w = np.array([1.0, -2.0])
    st = AdamState.like(w)
    g = np.array([0.5, -1.0])
    w1 = adam_step(w, g, st, learning_rate=0.1, beta1=0.9, beta2=0.999, epsilon=1e-8)
    # first step: mhat = g, vhat = g^2, so the step is lr * sign(g) (up to epsilon)
    np.testing.assert_allclose(w1, w - 0.1 * np.sign(g), rtol=1e-6)


def test_adam_minimises_a_quadratic() -> None:
    target = np.array([[3.0, -1.0]])

    def fun(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = w - target
        return (d * d).sum(axis=1), 2 * d

    res = optimize(fun, np.zeros((1, 2)), steps=300, learning_rate=0.1, decay=0.9,
                   epsilon=1e-8, method="adam")
    np.testing.assert_allclose(res.w, target, atol=1e-2)


def test_smooth_upsampling_has_no_grid_and_its_adjoint_is_the_transpose(
        rng: np.random.Generator) -> None:
    a = upsample_matrix(224, 14, "smooth")
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-6)  # no dark border
    # a constant coarse mask stays exactly constant; one on-cell gives one smooth bump
    flat = apply([a, a], np.full((1, 14, 14), 0.7, np.float32), adjoint=False)
    assert np.ptp(flat) < 1e-6
    one = np.zeros((1, 14, 14), np.float32)
    one[0, 7, 7] = 1.0
    bump = apply([a, a], one, adjoint=False)[0]
    row = bump[7 * 16 + 8]
    peak = int(row.argmax())
    assert 7 * 16 <= peak < 8 * 16
    assert np.all(np.diff(row[:peak]) >= -1e-7)
    assert np.all(np.diff(row[peak:]) <= 1e-7)
    w = rng.standard_normal((2, 14, 14)).astype(np.float32)
    gy = rng.standard_normal((2, 224, 224)).astype(np.float32)
    lhs = np.sum(apply([a, a], w, adjoint=False) * gy)
    rhs = np.sum(w * apply([a, a], gy, adjoint=True))
    assert lhs == pytest.approx(rhs, rel=1e-4)


def test_temperature_falls_geometrically_from_t_to_t_end() -> None:
    from scipy.special import expit

    from neuromask_onnx.areas import AreasObjective
    from neuromask_onnx.optimize import NeuroMaskConfig

    cfg = NeuroMaskConfig(temperature=0.5, temperature_end=0.1, steps=5, areas=(0.5,),
                          halves="preserve", smooth_weight=0.0)
    seen: list[float] = []

    def run_rows(masks: np.ndarray, which: int) -> tuple[np.ndarray, np.ndarray]:
        seen.append(float(masks.flat[0]))
        return np.full(len(masks), 0.5, np.float32), np.zeros_like(masks)

    obj = AreasObjective(cfg, 1, run_rows, lambda v, _adjoint: v, None)
    w = np.full((1, 2, 2), 0.1, np.float32)
    for _ in range(cfg.steps):
        obj(w)
    temps = [0.5 * (0.1 / 0.5) ** (i / 4) for i in range(5)]
    np.testing.assert_allclose(seen, expit(0.1 / np.array(temps)), rtol=1e-5)
    assert obj.inv_t == pytest.approx(1 / 0.1)  # the map is read at the last step's T


def test_detail_ranks_pixels_inside_a_plateau_and_keeps_the_masks_order() -> None:
    from neuromask_onnx.areas import with_detail

    mask = np.zeros((6, 6), np.float32)
    mask[:, 3:] = 0.75  # two plateaus, 0.75 apart
    detail = np.random.default_rng(0).normal(size=(6, 6))
    out = with_detail(mask, detail, 1.0, 0.0)
    assert out.min() == 0.0
    assert out.max() == 1.0
    for cols in (slice(0, 3), slice(3, 6)):  # inside a plateau: the detail's order
        np.testing.assert_array_equal(np.argsort(out[:, cols], axis=None),
                                      np.argsort(detail[:, cols], axis=None))
    # weight 1 moves a pixel by at most 1/2 of the largest |detail|: not across 0.75
    assert out[:, 3:].min() > out[:, :3].max()
    # no detail: the masks' mean stretched to [0, 1]
    np.testing.assert_allclose(with_detail(mask, np.zeros((6, 6)), 1.0, 0.0), mask / 0.75)
