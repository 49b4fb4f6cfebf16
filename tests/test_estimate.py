"""NeuroMask without rules: the estimated mask gradient (`neuromask_onnx.estimate`).

The estimate agrees with the exact gradient where both exist (one step, and the learned masks
rank features alike), and on a forest trained on data where only x0, x1, x2 carry the label
(models/sklearn/forest_known_answer.onnx) the mask keeps those three and little else.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from neuromask_onnx.errors import InputError, UnsupportedOpError
from neuromask_onnx.estimate import EstimateRunner
from neuromask_onnx.explain import NeuroMask
from neuromask_onnx.optimize import preset
from neuromask_onnx.rewrite import instrument
from neuromask_onnx.runtime import SessionRunner

MODELS = Path(__file__).resolve().parent.parent / "models"
FOREST = MODELS / "sklearn" / "forest_known_answer.onnx"
TABULAR = MODELS / "tabular_mlp.onnx"
# The classic (reference) objective with the tabular settings the CLI uses (no feature
# grouping, no Laplacian), zero baseline.
CONFIG = preset("reference").replace(steps=150, learning_rate=0.3, mask_scale=1,
                                     smooth_weight=0.0)


def _runners(batch: int = 2) -> tuple[SessionRunner, EstimateRunner]:
    exact = SessionRunner(instrument(TABULAR, batch_size=batch), "CPUExecutionProvider", 1)
    est = EstimateRunner(lambda b: instrument(TABULAR, batch_size=b, gradient=False), batch,
                         "CPUExecutionProvider", 1, (1,), CONFIG)
    return exact, est


def test_one_estimated_step_is_the_exact_gradient(rng: np.random.Generator) -> None:
    """12 features, 16 directions: a full orthogonal basis, so the estimate is a central
    difference along every coordinate (cosine ~1, same length)."""
    exact, est = _runners()
    x = rng.standard_normal((2, 12)).astype(np.float32)
    t = np.array([0, 1])
    exact.bind("features", x, t, None)
    est.bind("features", x, t, None)
    m = rng.uniform(0.1, 0.9, (2, 12)).astype(np.float32)
    loss_e, g_e, p_e = exact.run(m)
    loss_s, g_s, p_s = est.run(m)
    np.testing.assert_allclose(loss_s, loss_e, rtol=1e-5)
    np.testing.assert_allclose(p_s, p_e, rtol=1e-5)
    for a, b in zip(g_e, g_s, strict=True):
        cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert cos > 0.999, cos
        assert abs(np.linalg.norm(b) / np.linalg.norm(a) - 1) < 0.05
    assert est.runs == 1
    assert est.evaluations == 2 * 33


def test_fewer_directions_than_cells_are_unbiased(rng: np.random.Generator) -> None:
    """4 random orthogonal directions of 12: each estimate is noisy, their mean is not."""
    exact = SessionRunner(instrument(TABULAR, batch_size=1), "CPUExecutionProvider", 1)
    est = EstimateRunner(lambda b: instrument(TABULAR, batch_size=b, gradient=False), 1,
                         "CPUExecutionProvider", 1, (1,), CONFIG, directions=4, sigma=0.01)
    x = rng.standard_normal((1, 12)).astype(np.float32)
    exact.bind("features", x, np.array([1]), None)
    est.bind("features", x, np.array([1]), None)
    m = rng.uniform(0.1, 0.9, (1, 12)).astype(np.float32)
    g = exact.run(m)[1][0]
    mean = np.mean([est.run(m)[1][0] for _ in range(300)], axis=0)
    assert float(mean @ g / np.linalg.norm(mean) / np.linalg.norm(g)) > 0.98


def test_estimated_masks_rank_features_like_exact_ones(rng: np.random.Generator) -> None:
    """At the default budget (16 direction pairs a step) the learned masks agree."""
    xs = rng.standard_normal((3, 12)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = NeuroMask(TABULAR, CONFIG, gradient="exact", provider="cpu").attribute(xs)
        est = NeuroMask(TABULAR, CONFIG, gradient="estimate", provider="cpu").attribute(xs)
    assert isinstance(exact, list)
    assert isinstance(est, list)
    for a, b in zip(exact, est, strict=True):
        rho = spearmanr(a.mask.ravel(), b.mask.ravel())[0]
        assert rho > 0.95, rho


def test_the_forest_mask_keeps_the_features_that_decide() -> None:
    """x0 > 0 and x1 > 0 and x2 < 0 decides the label; features 3-7 are noise of the same
    size. At the zero baseline each deciding feature sits on its threshold."""
    rows = np.array([[1.2, 0.9, -1.1, 0.8, -0.9, 1.0, -1.2, 0.7],
                     [0.8, 1.1, -0.7, -1.0, 1.1, -0.8, 0.9, -1.1],
                     [1.0, 0.6, -1.2, 1.2, 0.8, 0.9, -0.7, -0.9]], np.float32)
    # The paper's plain sigmoid (T = 1) and a small tau: with T = 0.3 and tau = 10 the
    # initial mask is saturated at 0 or 1 and no gradient, exact or estimated, moves it.
    cfg = CONFIG.replace(temperature=1.0, tau=3.0, pred_weight=2.0, learning_rate=0.1)
    nm = NeuroMask(FOREST, cfg, provider="cpu")
    assert nm.gradient == "estimate"
    assert nm.gradient_note is not None
    assert "TreeEnsembleClassifier" in nm.gradient_note
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = nm.attribute(rows)
    assert isinstance(out, list)
    for ex in out:
        assert ex.target == 1
        assert set(np.argsort(-ex.mask)[:3].tolist()) == {0, 1, 2}, ex.mask
        assert ex.mask[:3].sum() > 0.6 * ex.mask.sum(), ex.mask  # measured: 0.64-0.81
        assert ex.prob_after > 0.9


def test_runs_repeat_and_do_not_depend_on_the_batch() -> None:
    row = np.array([1.2, 0.9, -1.1, 0.8, -0.9, 1.0, -1.2, 0.7], np.float32)
    cfg = CONFIG.replace(steps=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = NeuroMask(FOREST, cfg, provider="cpu", batch_size=1).attribute(row)
        again = NeuroMask(FOREST, cfg, provider="cpu", batch_size=1).attribute(row)
        pair = NeuroMask(FOREST, cfg, provider="cpu", batch_size=2).attribute(
            np.stack([row, -row]))
    assert not isinstance(one, list)
    assert not isinstance(again, list)
    assert isinstance(pair, list)
    np.testing.assert_array_equal(one.mask, again.mask)
    np.testing.assert_allclose(pair[0].mask, one.mask, atol=1e-6)


def test_exact_on_a_forest_says_no_gradient_exists() -> None:
    with pytest.raises(UnsupportedOpError, match=r"no gradient exists.*--gradient estimate"):
        NeuroMask(FOREST, CONFIG, gradient="exact", provider="cpu")


def test_bad_gradient_choice() -> None:
    with pytest.raises(InputError, match="gradient must be auto, exact or estimate"):
        NeuroMask(TABULAR, CONFIG, gradient="numeric", provider="cpu")


def test_a_fixed_batch_model_cannot_be_estimated() -> None:
    """logreg_iris takes exactly 3 rows; the estimate needs 3 x 33 in one run."""
    from neuromask_onnx.errors import ModelContractError

    nm = NeuroMask(MODELS / "sklearn" / "logreg_iris.onnx", CONFIG, gradient="estimate",
                   provider="cpu")
    with pytest.raises(ModelContractError, match="fixed batch axis does not allow"):
        nm.attribute(np.array([5.1, 3.5], np.float32))
