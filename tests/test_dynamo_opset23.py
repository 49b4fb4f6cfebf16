"""A torch dynamo export at opset 23, where Gelu and LayerNormalization are standard ops (issue
17): instrumented, its loss and mask gradient match torch autograd of
cross_entropy(net(x * mask), target)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from neuromask_onnx import instrument


class _Net(torch.nn.Module):  # type: ignore[misc,name-defined]
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.ln = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: object) -> object:
        h = self.conv(x).mean(dim=(2, 3))
        return self.fc(torch.nn.functional.gelu(self.ln(h)))


@pytest.mark.torch
def test_dynamo_opset23_gelu_layer_norm_matches_autograd(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _Net().eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.tensor(x),), str(path), dynamo=True, opset_version=23,
                          external_data=False, verbose=False)
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Gelu", "LayerNormalization"} <= ops, ops  # what this test is about
    model = instrument(str(path))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    mask = rng.uniform(0.5, 1.0, (1, 1, 8, 8)).astype(np.float32)
    target = np.array([3], np.int64)
    feeds = {sess.get_inputs()[0].name: x, "nm_mask": mask, "nm_target": target}
    loss, grad = sess.run(["nm_loss", "nm_grad_mask"], feeds)

    m = torch.tensor(mask, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(net(torch.tensor(x) * m), torch.tensor(target),
                                            reduction="none")
    ref.sum().backward()
    np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-4)
    err = np.linalg.norm(grad - m.grad.numpy()) / np.linalg.norm(m.grad.numpy())
    assert err < 1e-4, err
