"""Models in the styles real exporters produce, for the gradient benchmark.

The torchvision set (tools/export_torchvision.py) is what `torch.onnx.export` makes of clean
PyTorch code. Models people bring look different; each case here reproduces one exporter's
habits on a MobileNet-like net of realistic size (224 px, ImageNet-sized head), built with
torch export plus graph edits, so no TensorFlow or Paddle install is needed:

- "efficientnet_lite0": the pretrained EfficientNet-Lite0 of tools/export_efficientnet_lite0.py
  (static SAME padding as a `Pad` before every strided convolution, ReLU6 as `Clip`, shape
  side-computations around every pad).
- "tf2onnx_nhwc": an NHWC graph as tf2onnx leaves it when its transpose optimizer cannot see
  through a block: input [N, H, W, 3], every convolution wrapped in Transpose(NHWC->NCHW) /
  Transpose(NCHW->NHWC), the activation and the residual `Add` in NHWC between them, the
  head a `ReduceMean` over axes 1, 2.
- "keras3": Keras 3 style: batch norm unfused, as (x - mean) * rsqrt(var + eps) * gamma + beta
  (`Sub`, `Mul`, `Mul`, `Add` on per-channel constants), a `Cast` to float32 of every float32
  activation, and a float32 -> float64 -> float32 round trip before the head.
- "paddle": paddle2onnx style: `BatchNormalization` nodes kept unfused after every
  convolution, `HardSwish` activations.

Each `build(name, cache)` returns (path, input shape at batch 1, layout).

    python tools/real_exports.py --cache /tmp/nm_real [names ...]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CASES = ("efficientnet_lite0", "tf2onnx_nhwc", "keras3", "paddle")
SIZE = 224


def _mobilenet(act: str, seed: int = 0) -> object:
    """torchvision's MobileNetV2 (random weights, seeded) with its activation swapped."""
    import torch
    from torch import nn
    from torchvision.models import mobilenet_v2

    torch.manual_seed(seed)
    net = mobilenet_v2()
    if act == "hardswish":
        for mod in list(net.modules()):
            for k, child in mod.named_children():
                if isinstance(child, nn.ReLU6):
                    setattr(mod, k, nn.Hardswish())
    for m in net.modules():  # random but non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def _torch_export(net: object, shape: tuple[int, ...], path: Path, *, fold_bn: bool) -> None:
    import torch

    x = torch.zeros(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(path), input_names=["input"], output_names=["logits"],
                          opset_version=17, dynamo=False, do_constant_folding=True,
                          training=torch.onnx.TrainingMode.EVAL if fold_bn
                          else torch.onnx.TrainingMode.PRESERVE)


def _rebuild(m: onnx.ModelProto, nodes: list[onnx.NodeProto],
             inits: list[onnx.TensorProto], inputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    g = helper.make_graph(nodes, m.graph.name, inputs, list(m.graph.output), inits)
    out = helper.make_model(g, opset_imports=list(m.opset_import))
    out.ir_version = m.ir_version
    onnx.checker.check_model(out)
    return out


def _paddle(path: Path) -> None:
    """Unfused BatchNormalization after every Conv (PRESERVE keeps torch's BN nodes)."""
    _torch_export(_mobilenet("hardswish"), (1, 3, SIZE, SIZE), path, fold_bn=False)
    m = onnx.load(str(path))
    ops = {n.op_type for n in m.graph.node}
    assert "BatchNormalization" in ops, ops
    assert "HardSwish" in ops, ops


def _keras3(path: Path) -> None:
    """Rewrite each BatchNormalization as Sub/Mul/Mul/Add; add Casts after activations."""
    _paddle_like = path.with_suffix(".bn.onnx")
    _torch_export(_mobilenet("relu6"), (1, 3, SIZE, SIZE), _paddle_like, fold_bn=False)
    m = onnx.load(str(_paddle_like))
    _paddle_like.unlink()
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    extra: list[onnx.TensorProto] = []
    for i, n in enumerate(m.graph.node):
        if n.op_type == "BatchNormalization":
            gamma, beta, mean, var = (inits[k] for k in n.input[1:5])
            eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
            c = gamma.shape[0]
            names = [f"k3_{i}_{s}" for s in ("mean", "rstd", "gamma", "beta")]
            vals = [mean, 1.0 / np.sqrt(var + eps), gamma, beta]
            extra += [numpy_helper.from_array(v.astype(np.float32).reshape(c, 1, 1), k)
                      for k, v in zip(names, vals, strict=True)]
            t = [f"k3_{i}_t{j}" for j in range(3)]
            nodes += [helper.make_node("Sub", [n.input[0], names[0]], [t[0]]),
                      helper.make_node("Mul", [t[0], names[1]], [t[1]]),
                      helper.make_node("Mul", [t[1], names[2]], [t[2]]),
                      helper.make_node("Add", [t[2], names[3]], [n.output[0]])]
        elif n.op_type == "Clip":
            raw = n.output[0] + "_k3raw"
            nodes.append(helper.make_node("Clip", list(n.input), [raw]))
            nodes.append(helper.make_node("Cast", [raw], [n.output[0]], to=TensorProto.FLOAT))
        elif n.op_type == "Gemm":
            d, f = n.input[0] + "_k3f64", n.input[0] + "_k3f32"
            nodes.append(helper.make_node("Cast", [n.input[0]], [d], to=TensorProto.DOUBLE))
            nodes.append(helper.make_node("Cast", [d], [f], to=TensorProto.FLOAT))
            nodes.append(helper.make_node("Gemm", [f, *n.input[1:]], list(n.output),
                                          name=n.name, domain=n.domain))
            nodes[-1].attribute.extend(n.attribute)
        else:
            nodes.append(n)
    used = {i for n in nodes for i in n.input}
    kept = [t for t in m.graph.initializer if t.name in used]
    onnx.save(_rebuild(m, nodes, kept + extra, list(m.graph.input)), str(path))


def _tf2onnx_nhwc(path: Path) -> None:
    """NHWC in, each Conv between a Transpose pair, activations and Adds in NHWC."""
    _torch_export(_mobilenet("relu6"), (1, 3, SIZE, SIZE), path, fold_bn=True)
    m = onnx.load(str(path))
    to_nchw, to_nhwc = [0, 3, 1, 2], [0, 2, 3, 1]
    nodes: list[onnx.NodeProto] = [
        helper.make_node("Transpose", ["input_nhwc"], ["input"], perm=to_nchw)]
    nhwc: set[str] = set()  # NCHW values now present in NHWC only, as name + "_nhwc"
    back: set[str] = set()  # NHWC values already transposed back, as name + "_t"
    for n in m.graph.node:
        if n.op_type == "Conv":
            x = n.input[0]
            if x in nhwc:  # the producer left its output in NHWC: tf2onnx's Transpose back
                if x + "_t" not in back:
                    back.add(x + "_t")
                    nodes.append(helper.make_node("Transpose", [x + "_nhwc"], [x + "_t"],
                                                  perm=to_nchw))
                x = x + "_t"
            conv = helper.make_node("Conv", [x, *n.input[1:]], [n.output[0] + "_c"],
                                    name=n.name)
            conv.attribute.extend(n.attribute)
            nodes += [conv, helper.make_node("Transpose", [n.output[0] + "_c"],
                                             [n.output[0] + "_nhwc"], perm=to_nhwc)]
            nhwc.add(n.output[0])
        elif (n.op_type == "Clip" and n.input[0] in nhwc) or (
                n.op_type == "Add" and all(a in nhwc for a in n.input)):
            ins = [a + "_nhwc" if a in nhwc else a for a in n.input]
            nodes.append(helper.make_node(n.op_type, ins, [n.output[0] + "_nhwc"], name=n.name))
            nhwc.add(n.output[0])
        elif n.op_type == "GlobalAveragePool" and n.input[0] in nhwc:
            nodes.append(helper.make_node("ReduceMean", [n.input[0] + "_nhwc"], [n.output[0]],
                                          axes=[1, 2], keepdims=1))
        else:
            for a in n.input:
                if a in nhwc and a + "_t" not in back:
                    back.add(a + "_t")
                    nodes.append(helper.make_node("Transpose", [a + "_nhwc"], [a + "_t"],
                                                  perm=to_nchw))
            copy = helper.make_node(n.op_type, [a + "_t" if a in nhwc else a for a in n.input],
                                    list(n.output), name=n.name, domain=n.domain)
            copy.attribute.extend(n.attribute)
            nodes.append(copy)
    # ReduceMean keepdims gives [N,1,1,C]: the Flatten after it still yields [N, C].
    inp = helper.make_tensor_value_info("input_nhwc", TensorProto.FLOAT, ["N", SIZE, SIZE, 3])
    out = _rebuild(m, nodes, list(m.graph.initializer), [inp])
    onnx.save(out, str(path))


def build(name: str, cache: str | Path) -> tuple[Path, tuple[int, ...], str]:
    """The model file for case `name` (built once into `cache`), its input shape, its layout."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name}.onnx"
    nhwc = name == "tf2onnx_nhwc"
    shape = (1, SIZE, SIZE, 3) if nhwc else (1, 3, SIZE, SIZE)
    if not path.exists():
        tmp = path.with_suffix(".part.onnx")
        if name == "efficientnet_lite0":
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from export_efficientnet_lite0 import export

            export(tmp)
        else:
            {"tf2onnx_nhwc": _tf2onnx_nhwc, "keras3": _keras3, "paddle": _paddle}[name](tmp)
        tmp.rename(path)
    return path, shape, "NHWC" if nhwc else "NCHW"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(CASES))
    ap.add_argument("--cache", required=True)
    args = ap.parse_args(argv)
    for name in args.names:
        path, shape, layout = build(name, args.cache)
        ops: dict[str, int] = {}
        for n in onnx.load(str(path)).graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
        print(f"{name}: {path} {list(shape)} {layout} {dict(sorted(ops.items()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
