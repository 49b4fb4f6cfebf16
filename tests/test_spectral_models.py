"""torch.onnx exports through STFT and Det, checked against torch autograd (issue 17, h11-conf).

A small classifier takes the (masked) input's windowed STFT (a spectrogram front end, as audio
classifiers export it: STFT with an explicit `onesided`) and the determinants of 3 x 3 blocks
of it, then a linear head. Instrumented and run on onnxruntime CPU with a random mask ~ U(0.5,
1), loss and d loss / d mask must match torch autograd of cross_entropy(net(x * mask), target)
to a relative L2 error below 1e-4.
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
BATCH, LENGTH = 2, 36  # 36 samples: four 3 x 3 blocks, 8 frames of 8 at hop 4


class SpectralDet(torch.nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(8))
        self.head = torch.nn.Linear(5 * 8 * 2 + 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(x, n_fft=8, hop_length=4, window=self.window, center=False,
                          return_complex=False)  # [B, 5, 8, 2]
        dets = torch.linalg.det(x.reshape(-1, 4, 3, 3))  # [B, 4]
        return self.head(torch.cat([spec.flatten(1), dets], dim=1))


@pytest.mark.torch
def test_stft_and_det_export_matches_torch(tmp_path: Path, mask_gradient_errors: Any) -> None:
    torch.manual_seed(0)
    net = SpectralDet().eval()
    path = tmp_path / "spectral.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(net, (torch.zeros(BATCH, LENGTH),), str(path), dynamo=False,
                          opset_version=18, input_names=["input"], output_names=["logits"])
    assert {"STFT", "Det"} <= {n.op_type for n in onnx.load(str(path)).graph.node}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, LENGTH)).astype(np.float32)
    target = np.array([1, 2], dtype=np.int64)
    mask = rng.uniform(0.5, 1.0, (BATCH, LENGTH)).astype(np.float32)
    err_loss, err_grad = mask_gradient_errors(path, net, x, mask, target)
    print(f"STFT + Det: grad rel L2 {err_grad:.2e}, loss rel {err_loss:.2e}")
    assert err_loss < TOL
    assert err_grad < TOL
