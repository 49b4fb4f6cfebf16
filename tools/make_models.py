"""Write the small ONNX fixture models in models/ (seeded numpy + onnx.helper, no torch).

Each model mimics the structure of one exporter's output at a few kB, so the end-to-end tests
(tests/test_fixtures.py) cover the layouts and op mixes that real classifiers bring:

    python tools/make_models.py            # rewrites models/*.onnx; prints name, size, sha256

The weights are random (seed per model) and scaled so activations stay O(1). The output is
byte-for-byte reproducible; models/README.md lists the sha256 of each file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT
N = helper.make_node
OUT = Path(__file__).resolve().parent.parent / "models"


class Builder:
    """Collects nodes and seeded float32 weights; `w(shape)` is scaled by 1/sqrt(fan_in)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def w(self, name: str, shape: Sequence[int], fan_in: int | None = None,
          scale: float = 1.0) -> str:
        fan = fan_in if fan_in is not None else int(np.prod(shape[1:])) or 1
        arr = self.rng.standard_normal(shape) * scale / np.sqrt(fan)
        self.inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def const(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def bn(self, name: str, c: int) -> list[str]:
        r = self.rng
        return [self.const(f"{name}_s", r.uniform(0.8, 1.2, c)),
                self.const(f"{name}_b", r.normal(0, 0.1, c)),
                self.const(f"{name}_m", r.normal(0, 0.1, c)),
                self.const(f"{name}_v", r.uniform(0.8, 1.2, c))]

    def add(self, op: str, inputs: Sequence[str], output: str, **attrs: Any) -> str:
        self.nodes.append(N(op, list(inputs), [output], name=f"{op}_{len(self.nodes)}", **attrs))
        return output

    def model(self, name: str, inputs: Sequence[onnx.ValueInfoProto],
              outputs: Sequence[onnx.ValueInfoProto], opset: int, producer: str,
              ir_version: int = 8) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, name, list(inputs), list(outputs), self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name=producer)
        m.ir_version = ir_version  # onnx stamps a newer IR than onnxruntime 1.31 reads
        onnx.checker.check_model(m, full_check=True)
        return m


def vi(name: str, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, F, list(shape))


# --------------------------------------------------------------------------- the models


def cnn_nchw() -> onnx.ModelProto:
    """torch-legacy-like CNN: Conv/BN/Relu, MaxPool, strided conv, GAP, Flatten, Gemm logits."""
    b = Builder(1)
    h = b.add("Conv", ["input", b.w("c1_w", (8, 3, 3, 3)), b.const("c1_b", np.zeros(8))], "c1",
              pads=[1, 1, 1, 1])
    h = b.add("BatchNormalization", [h, *b.bn("bn1", 8)], "bn1")
    h = b.add("Relu", [h], "r1")
    h = b.add("MaxPool", [h], "p1", kernel_shape=[2, 2], strides=[2, 2])
    h = b.add("Conv", [h, b.w("c2_w", (16, 8, 3, 3))], "c2", pads=[1, 1, 1, 1], strides=[2, 2])
    h = b.add("Relu", [h], "r2")
    h = b.add("Conv", [h, b.w("c3_w", (16, 1, 3, 3)), b.const("c3_b", np.zeros(16))], "c3",
              pads=[1, 1, 1, 1], group=16)
    h = b.add("Clip", [h, b.const("lo", 0.0), b.const("hi", 6.0)], "r3")
    h = b.add("GlobalAveragePool", [h], "gap")
    h = b.add("Flatten", [h], "flat")
    b.add("Gemm", [h, b.w("fc_w", (10, 16), scale=3.0), b.const("fc_b", np.zeros(10))],
          "logits", transB=1)
    return b.model("cnn_nchw", [vi("input", ["batch", 3, 32, 32])], [vi("logits", ["batch", 10])],
                   17, "neuromask-onnx tools/make_models.py (torch-legacy style)")


def cnn_nhwc_tf() -> onnx.ModelProto:
    """tf2onnx-like: NHWC input, Transpose to NCHW, SAME_UPPER conv, Pad, AveragePool, Softmax."""
    b = Builder(2)
    h = b.add("Transpose", ["input_1"], "to_nchw", perm=[0, 3, 1, 2])
    h = b.add("Mul", [h, b.const("rescale", 1.0 / 2.0)], "rescaled")
    h = b.add("Conv", [h, b.w("c1_w", (8, 3, 3, 3)), b.const("c1_b", np.zeros(8))], "c1",
              auto_pad="SAME_UPPER", strides=[2, 2])
    h = b.add("Relu", [h], "r1")
    h = b.add("Pad", [h, b.const("pads", [0, 0, 0, 0, 0, 0, 1, 1], np.int64)], "padded",
              mode="constant")
    h = b.add("Conv", [h, b.w("c2_w", (8, 8, 3, 3))], "c2", strides=[2, 2])
    h = b.add("Sigmoid", [h], "sg")
    h = b.add("Mul", ["c2", h], "swish")  # x * sigmoid(x): fan-out of c2
    h = b.add("AveragePool", [h], "ap", kernel_shape=[2, 2], strides=[2, 2])
    h = b.add("Transpose", [h], "to_nhwc", perm=[0, 2, 3, 1])
    h = b.add("Reshape", [h, b.const("flat_shape", [-1, 8 * 4 * 4], np.int64)], "flat")
    h = b.add("MatMul", [h, b.w("fc_w", (128, 5), fan_in=128, scale=3.0)], "mm")
    h = b.add("Add", [h, b.const("fc_b", np.zeros(5))], "logits")
    b.add("Softmax", [h], "probs", axis=-1)
    return b.model("cnn_nhwc_tf", [vi("input_1", ["unk__0", 32, 32, 3])],
                   [vi("probs", ["unk__0", 5])], 13, "neuromask-onnx tools/make_models.py "
                   "(tf2onnx style)")


def legacy_opset9() -> onnx.ModelProto:
    """An opset-9 model: Upsample, Clip and Pad with attributes, BatchNormalization, Softmax-9."""
    b = Builder(3)
    h = b.add("Conv", ["data", b.w("c1_w", (6, 3, 3, 3)), b.const("c1_b", np.zeros(6))], "c1",
              strides=[2, 2], pads=[1, 1, 1, 1])
    h = b.add("BatchNormalization", [h, *b.bn("bn1", 6)], "bn1")
    h = b.add("Clip", [h], "relu6", min=0.0, max=6.0)
    h = b.add("Upsample", [h, b.const("scales", [1.0, 1.0, 2.0, 2.0])], "up", mode="nearest")
    h = b.add("Pad", [h], "padded", pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="constant", value=0.0)
    h = b.add("Conv", [h, b.w("c2_w", (6, 6, 3, 3))], "c2", strides=[2, 2])
    h = b.add("LeakyRelu", [h], "lr", alpha=0.1)
    h = b.add("MaxPool", [h], "mp", kernel_shape=[2, 2], strides=[2, 2])
    h = b.add("Flatten", [h], "flat")
    h = b.add("Gemm", [h, b.w("fc_w", (4, 6 * 4 * 4), scale=3.0), b.const("fc_b", np.zeros(4))],
              "fc", transB=1)
    b.add("Softmax", [h], "prob", axis=1)
    return b.model("legacy_opset9", [vi("data", [1, 3, 16, 16])], [vi("prob", [1, 4])], 9,
                   "neuromask-onnx tools/make_models.py (legacy opset 9)", ir_version=4)


def tabular_mlp() -> onnx.ModelProto:
    """A tabular binary classifier [N, F] -> one Sigmoid probability (sklearn-onnx/keras style)."""
    b = Builder(4)
    h = b.add("Sub", ["features", b.const("mean", b.rng.normal(0, 1, 12))], "centred")
    h = b.add("Div", [h, b.const("std", b.rng.uniform(0.5, 2.0, 12))], "scaled")
    h = b.add("Gemm", [h, b.w("w1", (12, 32), fan_in=12), b.const("b1", np.zeros(32))], "h1")
    h = b.add("Tanh", [h], "t1")
    h = b.add("MatMul", [h, b.w("w2", (32, 16), fan_in=32)], "h2")
    h = b.add("Elu", [h], "e2")
    h = b.add("Gemm", [h, b.w("w3", (16, 1), fan_in=16, scale=2.0)], "z")
    b.add("Sigmoid", [h], "probability")
    return b.model("tabular_mlp", [vi("features", ["N", 12])], [vi("probability", ["N", 1])],
                   15, "neuromask-onnx tools/make_models.py (tabular MLP)")


def timeseries_conv1d() -> onnx.ModelProto:
    """A time-series classifier [N, T, C]: Transpose, Conv1d, GlobalMaxPool over time, MatMul."""
    b = Builder(5)
    h = b.add("Transpose", ["series"], "nct", perm=[0, 2, 1])
    h = b.add("Conv", [h, b.w("k1", (8, 4, 5)), b.const("kb1", np.zeros(8))], "c1",
              pads=[2, 2])
    h = b.add("Relu", [h], "r1")
    h = b.add("Conv", [h, b.w("k2", (8, 8, 3))], "c2", dilations=[2], pads=[2, 2])
    h = b.add("Add", [h, "r1"], "res")
    h = b.add("ReduceMean", [h, b.const("time_axis", [2], np.int64)], "avg", keepdims=0)
    h = b.add("MatMul", [h, b.w("head", (8, 3), fan_in=8, scale=3.0)], "logits")
    return b.model("timeseries_conv1d", [vi("series", ["N", 24, 4])], [vi("logits", ["N", 3])],
                   18, "neuromask-onnx tools/make_models.py (time series)")


def tiny_vit() -> onnx.ModelProto:
    """ViT-like: patch Conv, class token Concat, LayerNorm, attention (MatMul/Softmax), Gelu,
    Gather of the class token, linear head (torch-dynamo style, opset 20)."""
    b = Builder(6)
    d, heads = 16, 2
    dh = d // heads
    h = b.add("Conv", ["pixel_values", b.w("patch_w", (d, 3, 4, 4)),
                       b.const("patch_b", np.zeros(d))], "patches", strides=[4, 4])
    h = b.add("Reshape", [h, b.const("tok_shape", [1, d, 16], np.int64)], "tok_t")
    h = b.add("Transpose", [h], "tok", perm=[0, 2, 1])
    h = b.add("Concat", [b.const("cls", b.rng.normal(0, 0.2, (1, 1, d))), h], "seq", axis=1)
    h = b.add("Add", [h, b.const("pos", b.rng.normal(0, 0.2, (1, 17, d)))], "emb")
    ln = b.add("LayerNormalization", [h, b.const("ln1_s", np.ones(d)),
                                      b.const("ln1_b", np.zeros(d))], "ln1", axis=-1)
    qkv = b.add("MatMul", [ln, b.w("qkv_w", (d, 3 * d), fan_in=d)], "qkv")
    q, k, v = (f"{n}_flat" for n in "qkv")
    b.nodes.append(N("Split", [qkv, b.const("qkv_split", [d, d, d], np.int64)], [q, k, v],
                     axis=-1, name="split_qkv"))
    per_head = b.const("head_shape", [1, 17, heads, dh], np.int64)
    qh = b.add("Transpose", [b.add("Reshape", [q, per_head], "q_r")], "q_h", perm=[0, 2, 1, 3])
    kh = b.add("Transpose", [b.add("Reshape", [k, per_head], "k_r")], "k_h", perm=[0, 2, 3, 1])
    vh = b.add("Transpose", [b.add("Reshape", [v, per_head], "v_r")], "v_h", perm=[0, 2, 1, 3])
    s = b.add("Mul", [b.add("MatMul", [qh, kh], "qk"), b.const("scale", 1 / np.sqrt(dh))],
              "scores")
    a = b.add("Softmax", [s], "attn", axis=-1)
    o = b.add("Transpose", [b.add("MatMul", [a, vh], "ctx_h")], "ctx_t", perm=[0, 2, 1, 3])
    o = b.add("Reshape", [o, b.const("ctx_shape", [1, 17, d], np.int64)], "ctx")
    h = b.add("Add", [h, b.add("MatMul", [o, b.w("proj_w", (d, d), fan_in=d)], "proj")], "res1")
    ln2 = b.add("LayerNormalization", [h, b.const("ln2_s", np.ones(d)),
                                       b.const("ln2_b", np.zeros(d))], "ln2", axis=-1)
    m = b.add("Gelu", [b.add("MatMul", [ln2, b.w("fc1", (d, 2 * d), fan_in=d)], "mlp1")], "gelu")
    h = b.add("Add", [h, b.add("MatMul", [m, b.w("fc2", (2 * d, d), fan_in=2 * d)], "mlp2")],
              "res2")
    cls = b.add("Gather", [h, b.const("cls_idx", 0, np.int64)], "cls_tok", axis=1)
    b.add("Gemm", [cls, b.w("head_w", (d, 6), fan_in=d, scale=3.0),
                   b.const("head_b", np.zeros(6))], "logits")
    return b.model("tiny_vit", [vi("pixel_values", [1, 3, 16, 16])], [vi("logits", [1, 6])],
                   20, "neuromask-onnx tools/make_models.py (torch-dynamo ViT style)",
                   ir_version=9)


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "cnn_nchw": cnn_nchw,
    "cnn_nhwc_tf": cnn_nhwc_tf,
    "legacy_opset9": legacy_opset9,
    "tabular_mlp": tabular_mlp,
    "timeseries_conv1d": timeseries_conv1d,
    "tiny_vit": tiny_vit,
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, build in MODELS.items():
        data = build().SerializeToString(deterministic=True)
        path = OUT / f"{name}.onnx"
        path.write_bytes(data)
        print(f"{path.name:24s} {len(data):7d} B  sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
