"""RMSProp with TF1 semantics, the loop, early stopping, and the config."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from neuromask_onnx.errors import InputError
from neuromask_onnx.optimize import (
    PRESETS,
    NeuroMaskConfig,
    RMSPropState,
    StepInfo,
    optimize,
    preset,
    rmsprop_step,
)


def test_tf1_step_by_hand() -> None:
    # TF1: ms starts at 1; ms = 0.9 * 1 + 0.1 * g^2; w -= lr * g / sqrt(ms + eps)
    w = np.array([[1.0, -2.0]])
    g = np.array([[2.0, -0.5]])
    state = RMSPropState.like(w)
    new = rmsprop_step(w, g, state, learning_rate=0.1, decay=0.9, epsilon=1e-10)
    ms = np.array([[0.9 + 0.1 * 4.0, 0.9 + 0.1 * 0.25]])
    np.testing.assert_allclose(state.ms, ms)
    np.testing.assert_allclose(new, w - 0.1 * g / np.sqrt(ms + 1e-10))
    # hand numbers for the first entry: 1 - 0.2 / sqrt(1.3)
    assert new[0, 0] == pytest.approx(1 - 0.2 / 1.3**0.5, rel=1e-9)
    # a large epsilon shows it sits inside the root: 1 - 0.2 / sqrt(1.3 + 0.06)
    big = rmsprop_step(w, g, RMSPropState.like(w), learning_rate=0.1, decay=0.9, epsilon=0.06)
    assert big[0, 0] == pytest.approx(1 - 0.2 / 1.36**0.5, rel=1e-12)
    # second step reuses the accumulator
    new2 = rmsprop_step(new, g, state, learning_rate=0.1, decay=0.9, epsilon=1e-10)
    ms2 = 0.9 * ms + 0.1 * g**2
    np.testing.assert_allclose(new2, new - 0.1 * g / np.sqrt(ms2 + 1e-10))


def test_tf1_momentum() -> None:
    w, g = np.array([[0.0]]), np.array([[1.0]])
    state = RMSPropState.like(w)
    w1 = rmsprop_step(w, g, state, learning_rate=1.0, decay=0.5, epsilon=0.0, momentum=0.5)
    w2 = rmsprop_step(w1, g, state, learning_rate=1.0, decay=0.5, epsilon=0.0, momentum=0.5)
    assert w1[0, 0] == pytest.approx(-1.0)  # ms = 0.5 + 0.5 = 1
    assert w2[0, 0] == pytest.approx(-1.0 - (0.5 * 1.0 + 1.0))


def test_rmsprop_decreases_a_convex_quadratic(rng: np.random.Generator) -> None:
    a = rng.uniform(0.5, 3.0, (2, 5))
    c = rng.standard_normal((2, 5))

    def fun(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = w - c
        return 0.5 * (a * d * d).sum(axis=1), a * d

    calls: list[StepInfo] = []
    res = optimize(fun, np.zeros((2, 5)), steps=300, learning_rate=0.05, decay=0.9,
                   epsilon=1e-10, callback=calls.append)
    assert len(calls) == 300
    assert [c.step for c in calls] == list(range(1, 301))
    first, last = res.losses[0][0], fun(res.w)[0]
    assert np.all(last < 1e-3 * fun(np.zeros((2, 5)))[0])
    assert first > res.losses[0][-1]
    np.testing.assert_allclose(res.w, c, atol=0.05)
    assert res.steps.tolist() == [300, 300]


def test_early_stopping_is_per_sample() -> None:
    # sample 0 has a flat loss (stops after patience steps), sample 1 keeps moving
    def fun(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        loss = np.array([1.0, float(w[1, 0])])
        grad = np.array([[0.0], [1.0]])
        return loss, grad

    res = optimize(fun, np.zeros((2, 1)), steps=60, learning_rate=0.1, decay=0.9,
                   epsilon=1e-10, tolerance=1e-6, patience=10)
    assert res.steps.tolist() == [11, 60]
    assert res.stopped_early.tolist() == [True, False]
    assert len(res.losses[0]) == 11
    assert len(res.losses[1]) == 60


def test_config_is_frozen_and_validated() -> None:
    cfg = NeuroMaskConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3  # type: ignore[misc]
    with pytest.raises(InputError, match="temperature"):
        NeuroMaskConfig(temperature=0)
    with pytest.raises(InputError, match="laplacian_size"):
        cfg.replace(laplacian_size=4)
    assert cfg.replace(steps=7, tau=None).steps == 7


def test_presets_follow_the_design_table() -> None:
    ref, paper = preset("reference"), preset("paper")
    assert (ref.temperature, ref.tau, ref.learning_rate, ref.decay, ref.epsilon) == (
        0.3, 10.0, 0.03, 0.9, 1e-10)
    assert (ref.pred_weight, ref.sparse_weight, ref.smooth_weight) == (0.4, 0.35, 0.03)
    assert (ref.sparse_reduce, ref.smooth_norm, ref.smooth_reduce, ref.laplacian_size) == (
        "mean", "squared", "mean", 5)
    assert ref.steps == 1000
    cifar = preset("reference-cifar")
    assert (cifar.pred_weight, cifar.sparse_weight, cifar.smooth_weight) == (50, 16, 3)
    assert cifar.laplacian_size == 3
    assert (paper.temperature, paper.tau, paper.sparse_reduce, paper.smooth_norm) == (
        1.0, 20.0, "sum", "l1")
    assert ref.mode == "classic"
    assert (ref.optimizer, ref.init, ref.mask_scale, ref.mask_cells, ref.smooth_padding) == (
        "rmsprop", "uniform", 1, 0, "valid")
    # 'default' is tuned (tools/evaluate_methods.py) and is what NeuroMaskConfig() gives.
    assert preset("default") == NeuroMaskConfig()
    assert preset("default").mode == "areas"
    assert set(PRESETS) == {"default", "reference", "reference-cifar", "paper"}
    with pytest.raises(InputError, match="unknown preset"):
        preset("nope")


def test_every_config_field_is_documented() -> None:
    import ast
    import inspect
    import itertools

    import neuromask_onnx.optimize as mod

    tree = ast.parse(inspect.getsource(mod.NeuroMaskConfig))
    body = tree.body[0].body  # type: ignore[attr-defined]
    documented = {b.target.id for b, nxt in itertools.pairwise(body)
                  if isinstance(b, ast.AnnAssign) and isinstance(nxt, ast.Expr)}
    assert documented == {f.name for f in dataclasses.fields(NeuroMaskConfig)}
