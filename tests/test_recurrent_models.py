"""Whole-model gradient checks of torch.onnx recurrent exports against torch autograd.

Every net of `tools/export_recurrent.py` (LSTM, GRU, RNN; 1-2 layers; bidirectional; batch
first or sequence first) is exported, instrumented and run in onnxruntime CPU with a random
mask ~ U(0.5, 1) over the time axis. Loss and d loss / d mask must match torch autograd of
cross_entropy(net(x * mask), target) to a relative L2 error below 1e-4.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")


TOOLS = Path(__file__).resolve().parents[1] / "tools"
TOL = 1e-4
BATCH = 2


def _load_exporter() -> Any:
    spec = importlib.util.spec_from_file_location("nm_export_recurrent",
                                                  TOOLS / "export_recurrent.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


EXP = _load_exporter()


@pytest.mark.torch
@pytest.mark.parametrize("name", list(EXP.ARCHS))
def test_recurrent_gradient_matches_torch(name: str, tmp_path: Path,
                                         mask_gradient_errors: Any) -> None:
    net = EXP.build(name)
    path = EXP.export(name, tmp_path, net=net, batch=BATCH)
    cell = EXP.ARCHS[name].cell
    assert cell in {n.op_type for n in onnx.load(str(path)).graph.node}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, EXP.SEQ, EXP.FEATURES)).astype(np.float32)
    mask = rng.uniform(0.5, 1.0, (BATCH, EXP.SEQ, 1)).astype(np.float32)
    target = np.array([1, 2], dtype=np.int64)

    err_loss, err_grad = mask_gradient_errors(path, net, x, mask, target)
    print(f"{name}: grad rel L2 {err_grad:.2e}, loss rel {err_loss:.2e}")
    assert err_loss < TOL
    assert err_grad < TOL
