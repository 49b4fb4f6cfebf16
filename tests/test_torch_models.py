"""End-to-end gradient checks on exported torchvision models against torch autograd.

Every architecture of `tools/export_torchvision.py` is exported once per session with both
torch exporters (TorchScript opset 17, dynamo), instrumented, and run in onnxruntime CPU with a
random mask ~ U(0.5, 1). The loss and d loss / d mask must match torch autograd of
cross_entropy(model(x * mask), target) to a relative L2 error below 1e-4. The target is the
5th-ranked class of the unmasked prediction: random-weight nets saturate their argmax.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
ort = pytest.importorskip("onnxruntime")

from neuromask_onnx import instrument

TOOLS = Path(__file__).resolve().parents[1] / "tools"
TOL = 1e-4


def _load_exporter() -> Any:
    spec = importlib.util.spec_from_file_location("nm_export_torchvision",
                                                  TOOLS / "export_torchvision.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(mod)
    return mod


EXP = _load_exporter()

# Nets whose torch float32 gradient is itself inaccurate, measured against torch float64:
# vgg11_bn (224 px, seed 0) gives torch fp32 vs fp64 = 2.0e-3 (loss identical), while the
# instrumented model in onnxruntime fp32 is 5.9e-7 from fp64. For these the reference is torch
# float64, with the same tolerance.
FP32_ILL_CONDITIONED = frozenset({"vgg11_bn"})

CASES = [(name, exp) for name in EXP.ARCHS for exp in EXP.EXPORTERS]
BATCH = {"nhwc_net": 2, "softmax_net": 2}


@pytest.fixture(scope="session")
def torch_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache directory per session; each model is exported on first use."""
    return tmp_path_factory.mktemp("torch_models")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64))
                 / max(np.linalg.norm(b.astype(np.float64)), 1e-30))


def _torch_reference(net: Any, x: np.ndarray, mask: np.ndarray, target: np.ndarray,
                     probabilities: bool, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample loss and d sum(loss) / d mask from torch autograd in `dtype`."""
    net = net.to(dtype)
    mt = torch.tensor(mask, dtype=dtype, requires_grad=True)
    out = net(torch.tensor(x, dtype=dtype) * mt)
    t = torch.tensor(target)
    if probabilities:
        loss = torch.nn.functional.nll_loss(torch.log(out), t, reduction="none")
    else:
        loss = torch.nn.functional.cross_entropy(out, t, reduction="none")
    loss.sum().backward()
    assert mt.grad is not None
    return loss.detach().numpy(), mt.grad.numpy()


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize(("name", "exporter"), CASES, ids=[f"{n}-{e}" for n, e in CASES])
def test_gradient_matches_torch(name: str, exporter: str, torch_model_dir: Path) -> None:
    arch = EXP.ARCHS[name]
    net = EXP.build(name)
    n = BATCH.get(name, 1)
    path = EXP.export(name, exporter, torch_model_dir, net=net, batch=n)
    shape = EXP.input_shape(name, batch=n)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    mshape = (n, *shape[1:3], 1) if arch.layout == "NHWC" else (n, 1, *shape[2:])
    mask = rng.uniform(0.5, 1.0, mshape).astype(np.float32)
    with torch.no_grad():
        scores = net(torch.tensor(x)).numpy()
    target = np.argsort(-scores, axis=1)[:, 4].astype(np.int64)

    model = instrument(str(path), batch_size=n)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    loss, grad, _ = sess.run(["nm_loss", "nm_grad_mask", "nm_probs"],
                             {"input": x, "nm_mask": mask, "nm_target": target})
    assert grad.shape == mask.shape

    probabilities = arch.outputs == "probabilities"
    ref_loss, ref_grad = _torch_reference(net, x, mask, target, probabilities, torch.float32)
    err_grad, err_loss = _rel(grad, ref_grad), _rel(loss, ref_loss)
    report = f"{name} {exporter}: grad rel L2 {err_grad:.2e}, loss rel {err_loss:.2e}"
    if name in FP32_ILL_CONDITIONED:
        ref_loss, grad64 = _torch_reference(net, x, mask, target, probabilities, torch.float64)
        err_grad, err_loss = _rel(grad, grad64), _rel(loss, ref_loss)
        report += (f"; vs torch fp64: grad {err_grad:.2e}, loss {err_loss:.2e} "
                   f"(torch fp32 vs fp64: {_rel(ref_grad, grad64):.2e})")
    print(report)
    assert err_grad < TOL, report
    assert err_loss < TOL, report
