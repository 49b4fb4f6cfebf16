"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# --------------------------------------------------------------------------- gradient tests
# (tests/test_vjp_rules.py, tests/test_driver.py, tests/test_fixtures.py)

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh seeded generator per test: results never depend on test order."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The checked-in fixture models written by tools/make_models.py."""
    return MODELS_DIR

# --------------------------------------------------------------------------- end gradient tests


# --------------------------------------------------------------------------- torch exports
# (tests/test_recurrent_models.py, tests/test_gridsample_models.py): the instrumented model's
# per-sample cross-entropy and mask gradient against torch autograd of the same net.


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Relative L2 error of a against b."""
    return float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64))
                 / max(np.linalg.norm(b.astype(np.float64)), 1e-30))


def _mask_gradient_errors(path: Path, net: Any, x: np.ndarray, mask: np.ndarray,
                          target: np.ndarray) -> tuple[float, float]:
    """(loss error, gradient error), relative L2, of `path` instrumented at x's batch size."""
    import onnxruntime as ort
    import torch

    from neuromask_onnx import instrument

    model = instrument(str(path), batch_size=len(x))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    loss, grad = sess.run(["nm_loss", "nm_grad_mask"],
                          {"input": x, "nm_mask": mask, "nm_target": target})
    mt = torch.tensor(mask, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(net(torch.tensor(x) * mt), torch.tensor(target),
                                            reduction="none")
    ref.sum().backward()
    assert mt.grad is not None
    return _rel(loss, ref.detach().numpy()), _rel(grad, mt.grad.numpy())


@pytest.fixture
def mask_gradient_errors() -> Callable[..., tuple[float, float]]:
    """`_mask_gradient_errors(path, net, x, mask, target) -> (loss error, gradient error)`."""
    return _mask_gradient_errors


def _matches_torch(sess: Any, net: Any, x: np.ndarray, mask: np.ndarray,
                   target: np.ndarray) -> None:
    """The instrumented session's per-row cross-entropy and mask gradient at (x, mask,
    target) equal torch autograd's of `net` at x * mask (input name "input")."""
    import torch

    mt = torch.tensor(mask, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(net(torch.tensor(x) * mt), torch.tensor(target),
                                            reduction="none")
    ref.sum().backward()
    assert mt.grad is not None
    loss, grad = sess.run(["nm_loss", "nm_grad_mask"],
                          {"input": x, "nm_mask": mask, "nm_target": target})
    np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(grad, mt.grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.fixture
def matches_torch() -> Callable[..., None]:
    """`matches_torch(sess, net, x, mask, target)`: see `_matches_torch`."""
    return _matches_torch
