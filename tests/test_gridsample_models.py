"""A spatial transformer exported by torch.onnx, checked against torch autograd (issue 17).

The net computes an affine grid from the (masked) image with a small localization net, samples
the image with `grid_sample` (GridSample-16 in the export) and classifies the result, so the
mask's gradient flows through GridSample to both X and the grid. Instrumented and run on
onnxruntime CPU with a random mask ~ U(0.5, 1), loss and d loss / d mask must match torch
autograd of cross_entropy(net(x * mask), target) to a relative L2 error below 1e-4.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")


TOL = 1e-4
BATCH, C, H, W = 2, 3, 8, 9


class SpatialTransformer(torch.nn.Module):  # type: ignore[misc]
    def __init__(self, mode: str, padding: str, align: bool) -> None:
        super().__init__()
        self.mode, self.padding, self.align = mode, padding, align
        self.loc = torch.nn.Conv2d(C, 4, 3, stride=2)
        self.theta = torch.nn.Linear(4, 6)
        with torch.no_grad():  # near the identity, with a zoom out: some points outside
            self.theta.weight.mul_(0.3)
            self.theta.bias.copy_(torch.tensor([1.3, 0.2, 0.1, -0.15, 1.2, 0.05]))
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, 5), torch.linspace(-1, 1, 6), indexing="ij")
        self.register_buffer("base", torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3))
        self.head = torch.nn.Linear(C * 30, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = torch.relu(self.loc(x)).mean(dim=(2, 3))
        theta = self.theta(feat).reshape(-1, 2, 3)
        grid = torch.matmul(self.base, theta.transpose(1, 2)).reshape(-1, 5, 6, 2)
        y = torch.nn.functional.grid_sample(x, grid, mode=self.mode, padding_mode=self.padding,
                                            align_corners=self.align)
        return self.head(y.flatten(1))


@pytest.mark.torch
@pytest.mark.parametrize(("mode", "padding", "align"), [
    ("bilinear", "zeros", False), ("bilinear", "border", True), ("bicubic", "reflection", False),
    ("bicubic", "border", False), ("nearest", "zeros", False)])
def test_spatial_transformer_matches_torch(mode: str, padding: str, align: bool,
                                           tmp_path: Path, mask_gradient_errors: Any) -> None:
    torch.manual_seed(0)
    net = SpatialTransformer(mode, padding, align).eval()
    path = tmp_path / "stn.onnx"
    x0 = torch.zeros(BATCH, C, H, W)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(net, (x0,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    assert "GridSample" in {n.op_type for n in onnx.load(str(path)).graph.node}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, C, H, W)).astype(np.float32)
    target = np.array([1, 3], dtype=np.int64)
    mshape = [BATCH, 1, H, W]
    mask = rng.uniform(0.5, 1.0, mshape).astype(np.float32)
    err_loss, err_grad = mask_gradient_errors(path, net, x, mask, target)
    print(f"{mode}/{padding}/{align}: grad rel L2 {err_grad:.2e}, loss rel {err_loss:.2e}")
    assert err_loss < TOL
    assert err_grad < TOL
