"""The same NeuroMask written directly in torch autograd gives the same mask after 20 steps.

Same model (exported to ONNX here), same W0, same hyperparameters (the `reference` preset),
same TF1 RMSProp (accumulator starts at 1, epsilon inside the root). Only the prediction
gradient differs in where it comes from: onnxruntime's instrumented graph vs torch autograd.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from neuromask_onnx.explain import Explanation, NeuroMask
from neuromask_onnx.optimize import preset

pytestmark = pytest.mark.torch


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 5))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def _torch_neuromask(net: torch.nn.Module, x: np.ndarray, w0: np.ndarray, steps: int,
                     cfg) -> np.ndarray:  # type: ignore[no-untyped-def]
    xt = torch.from_numpy(x)[None]
    with torch.no_grad():
        target = net(xt).argmax(dim=1)
    k = -torch.ones(1, 1, 5, 5)
    k[0, 0, 2, 2] = 24.0
    w = torch.from_numpy(w0.copy())
    ms = torch.ones_like(w)
    for _ in range(steps):
        w.requires_grad_(True)
        m = torch.sigmoid(w / cfg.temperature)
        ce = F.cross_entropy(net(m[None, None] * xt), target)
        sparse = (w + cfg.tau).abs().mean()
        smooth = F.conv2d(w[None, None], k).square().mean()
        loss = cfg.pred_weight * ce + cfg.sparse_weight * sparse + cfg.smooth_weight * smooth
        (g,) = torch.autograd.grad(loss, w)
        with torch.no_grad():
            ms = cfg.decay * ms + (1 - cfg.decay) * g * g
            w = w - cfg.learning_rate * g / torch.sqrt(ms + cfg.epsilon)
    return torch.sigmoid(w / cfg.temperature).detach().numpy()


def test_same_mask_as_torch_autograd(tmp_path: Path) -> None:
    net = _net()
    path = tmp_path / "small_cnn.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, still fine
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"])
    # the reference preset with a prediction weight large enough that the model's gradient,
    # not only the regularisers, moves the mask in 20 steps
    cfg = preset("reference").replace(steps=20, seed=3, pred_weight=40.0)
    x = np.random.default_rng(4).standard_normal((3, 16, 16)).astype(np.float32)
    ex = NeuroMask(path, cfg, provider="cpu").attribute(x)
    assert isinstance(ex, Explanation)
    w0 = np.random.default_rng([cfg.seed, 0]).uniform(-cfg.tau, cfg.tau, (16, 16)).astype(
        np.float32)
    want = _torch_neuromask(net, x, w0, 20, cfg)
    start = 1.0 / (1.0 + np.exp(-w0 / cfg.temperature))
    assert np.abs(want - start).max() > 0.01  # the 20 steps moved the mask
    blind = _torch_neuromask(net, x, w0, 20, cfg.replace(pred_weight=1e-9))
    assert np.abs(want - blind).max() > 0.01  # ... and the model's gradient mattered
    assert np.abs(ex.mask - want).max() < 1e-3
