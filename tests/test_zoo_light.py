"""The ONNX Model Zoo classics, as the `onnx` wheel ships them, against torch autograd in float64.

`onnx/backend/test/data/light/light_*.onnx` are the Zoo's Caffe2 conversions (IR 3, opset 9:
every initializer also listed as a graph input) of ResNet-50, SqueezeNet, VGG-19,
DenseNet-121, Inception v1/v2, ShuffleNet, AlexNet and ZFNet-512, with every weight replaced
by a `ConstantOfShape` of 0.02. Constant weights make every class score equal and the mask
gradient exactly zero, so each test draws seeded He-scaled weights of the same shapes (as
IR-3 initializers listed as inputs, like the originals); the first two fully connected layers
of AlexNet, ZFNet and VGG (16M-103M elements) keep their `ConstantOfShape` with 1 / fan-in.

The reference is an independent float64 interpreter of these graphs in torch (`_torch_eval`,
only the ops the nine graphs use, opset-9 semantics); its forward pass is first checked
against onnxruntime on the original graph, then its autograd mask gradient of
cross_entropy(logits(x * mask), target) is compared with the instrumented model's
`nm_grad_mask` (onnxruntime, float32).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
F = torch.nn.functional

from neuromask_onnx import instrument

pytestmark = pytest.mark.torch

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
          "shufflenet", "squeezenet", "vgg19", "zfnet512"]
SLOW = {"vgg19", "resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet"}
RANDOM_LIMIT = 5_000_000  # weights with more elements stay ConstantOfShape (1 / fan-in)
TOL = 1e-4


def _randomised(m: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    """Same graph; each ConstantOfShape weight becomes a seeded random IR-3 initializer."""
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(m)
    del out.graph.node[:]
    for node in m.graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            out.graph.node.append(node)
            continue
        shape = tuple(int(d) for d in inits[node.input[0]])
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if int(np.prod(shape)) > RANDOM_LIMIT:
            kept = onnx.NodeProto()
            kept.CopyFrom(node)
            kept.attribute[0].t.CopyFrom(numpy_helper.from_array(
                np.array([1.0 / fan], np.float32)))
            out.graph.node.append(kept)
            continue
        if len(shape) > 1:  # conv / fc weight: He scaling keeps activations O(1)
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan)
        else:  # biases, BatchNorm scale / shift / mean / variance: positive, O(1)
            value = rng.uniform(0.5, 1.5, shape)
        t = numpy_helper.from_array(value.astype(np.float32), node.output[0])
        out.graph.initializer.append(t)
        out.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, shape))
    return out


# --------------------------------------------------------------------------- the reference


def _pads(at: dict[str, Any], rank: int) -> list[int]:
    """ONNX pads [b1, b2, e1, e2] as F.pad's [b2, e2, b1, e1]."""
    p = list(at.get("pads", [0] * (2 * rank)))
    out: list[int] = []
    for i in reversed(range(rank)):
        out += [p[i], p[i + rank]]
    return out


def _pool(x: Any, at: dict[str, Any], kind: str) -> Any:
    k, s = list(at["kernel_shape"]), list(at.get("strides", [1] * len(at["kernel_shape"])))
    pads = _pads(at, len(k))
    if kind == "max":
        return F.max_pool2d(F.pad(x, pads, value=-np.inf), k, s)
    total = F.avg_pool2d(F.pad(x, pads), k, s) * float(np.prod(k))
    if at.get("count_include_pad", 0):
        return total / float(np.prod(k))
    ones = torch.ones_like(x[:1, :1])
    return total / (F.avg_pool2d(F.pad(ones, pads), k, s) * float(np.prod(k)))


def _lrn(x: Any, at: dict[str, Any]) -> Any:
    size = int(at["size"])
    lo, hi = (size - 1) // 2, size // 2
    sq = F.pad(x * x, (0, 0, 0, 0, lo, hi))
    c = x.shape[1]
    s = sum(sq[:, i:i + c] for i in range(size))
    d = at.get("bias", 1.0) + at.get("alpha", 1e-4) / size * s
    return x / d ** at.get("beta", 0.75)


def _node(op: str, ins: list[Any], at: dict[str, Any]) -> Any:
    x = ins[0]
    if op == "Conv":
        pads = _pads(at, len(at["kernel_shape"]))
        y = F.conv2d(F.pad(x, pads), ins[1], None, list(at.get("strides", [1, 1])), 0,
                     list(at.get("dilations", [1, 1])), at.get("group", 1))
        return y if len(ins) < 3 else y + ins[2].reshape(1, -1, 1, 1)
    if op == "Relu":
        return torch.relu(x)
    if op == "MaxPool":
        return _pool(x, at, "max")
    if op == "AveragePool":
        return _pool(x, at, "avg")
    if op == "GlobalAveragePool":
        return x.mean(dim=(2, 3), keepdim=True)
    if op == "LRN":
        return _lrn(x, at)
    if op == "Dropout":
        return x
    if op == "Gemm":
        a = x.T if at.get("transA", 0) else x
        b = ins[1].T if at.get("transB", 0) else ins[1]
        return at.get("alpha", 1.0) * a @ b + at.get("beta", 1.0) * ins[2]
    if op == "BatchNormalization":
        _, s, b, mean, var = (t.reshape(1, -1, 1, 1) for t in [x[:1, :, :1, :1], *ins[1:]])
        return (x - mean) / torch.sqrt(var + at.get("epsilon", 1e-5)) * s + b
    if op == "Reshape":
        shape = [int(d) if int(d) != 0 else x.shape[i] for i, d in enumerate(ins[1])]
        return x.reshape(shape)
    if op == "Softmax":  # opset 9: coerced to 2-D at `axis`
        axis = at.get("axis", 1)
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return torch.softmax(flat, dim=1).reshape(x.shape)
    if op == "Concat":
        return torch.cat(ins, dim=at["axis"])
    if op == "Sum":
        return sum(ins[1:], ins[0])
    if op in ("Mul", "Add"):
        return x * ins[1] if op == "Mul" else x + ins[1]
    if op == "Unsqueeze":
        for a in sorted(at["axes"]):
            x = x.unsqueeze(a)
        return x
    if op == "Transpose":
        return x.permute(*at["perm"])
    msg = f"the test's reference has no {op}"
    raise AssertionError(msg)


def _torch_eval(m: onnx.ModelProto, x: Any, stops: list[str]) -> list[Any]:
    """Run the graph in torch (in x's dtype); return the values named in `stops`."""
    env: dict[str, Any] = {}
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        env[t.name] = torch.tensor(a).to(x.dtype) if a.dtype.kind == "f" else torch.tensor(a)
    env[_data_input(m)] = x
    for node in m.graph.node:
        at = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "ConstantOfShape":
            value = float(numpy_helper.to_array(at["value"])[0])
            env[node.output[0]] = torch.full(tuple(env[node.input[0]].tolist()), value,
                                             dtype=x.dtype)
        elif node.op_type == "Reshape":
            env[node.output[0]] = _node("Reshape", [env[node.input[0]],
                                                    env[node.input[1]].tolist()], at)
        else:
            env[node.output[0]] = _node(node.op_type, [env[i] for i in node.input], at)
    return [env[s] for s in stops]


def _torch_grad(m: onnx.ModelProto, x: np.ndarray, mask: np.ndarray, target: np.ndarray | None,
                dtype: Any) -> tuple[Any, Any, float, np.ndarray]:
    """Logits, output, loss and d loss / d mask; the target defaults to the 5th-ranked class."""
    mt = torch.tensor(mask, dtype=dtype, requires_grad=True)
    z, out = _torch_eval(m, torch.tensor(x, dtype=dtype) * mt,
                         [_logits_name(m), m.graph.output[0].name])
    z = z.reshape(1, -1)
    if target is None:
        target = np.argsort(-z.detach().numpy(), axis=1)[:, 4]
    loss = F.cross_entropy(z, torch.tensor(target))
    loss.backward()
    assert mt.grad is not None
    return target, out.detach().numpy(), float(loss.detach()), mt.grad.double().numpy()


def _data_input(m: onnx.ModelProto) -> str:
    inits = {t.name for t in m.graph.initializer}
    return next(vi.name for vi in m.graph.input if vi.name not in inits)


def _logits_name(m: onnx.ModelProto) -> str:
    last = m.graph.node[-1]
    return str(last.input[0]) if last.op_type == "Softmax" else str(m.graph.output[0].name)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b), 1e-300))


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in MODELS])
def test_zoo_light_gradient_matches_torch_float64(name: str) -> None:
    rng = np.random.default_rng(0)
    m = _randomised(onnx.load(str(LIGHT / f"light_{name}.onnx")), rng)
    assert m.ir_version == 3
    x_name = _data_input(m)
    x = rng.uniform(0.0, 1.0, (1, 3, 224, 224)).astype(np.float32)
    mask = rng.uniform(0.5, 1.0, (1, 1, 224, 224)).astype(np.float32)
    target, out, ref_loss, ref_grad = _torch_grad(m, x, mask, None, torch.float64)

    # the reference's forward pass is onnxruntime's on the original graph
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    want = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"]
                                ).run(None, {x_name: x * mask})[0]
    assert _rel(want, out) < 1e-4

    im = instrument(m)
    assert [vi.name for vi in im.graph.input] == [x_name, "nm_mask", "nm_target"]
    sess = ort.InferenceSession(im.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    loss, grad = sess.run(["nm_loss", "nm_grad_mask"],
                          {x_name: x, "nm_mask": mask, "nm_target": target})
    assert np.linalg.norm(ref_grad) > 1e-3 * abs(ref_loss) / mask.size, "degenerate: no gradient"
    err = _rel(grad, ref_grad)
    report = f"{name}: loss {float(loss[0]):.6g} vs {ref_loss:.6g}, grad rel L2 {err:.2e}"
    bound = TOL
    if err >= TOL:
        # ReLU nets whose float32 gradient is itself ill-conditioned: the instrumented model
        # must then be as close to float64 as torch's own float32 autograd is.
        torch32 = _rel(_torch_grad(m, x, mask, target, torch.float32)[3], ref_grad)
        bound = max(TOL, 2.0 * torch32)
        report += f" (torch float32 vs float64: {torch32:.2e})"
    print(report)
    assert abs(float(loss[0]) - ref_loss) < TOL * max(1.0, abs(ref_loss)), report
    assert err < bound, report
