"""Every VJP rule, checked by the dot-product test in float64 on onnx's reference evaluator.

One table of small models (`CASES`), one parametrized test over it, and a coverage test that
the table and `VJP_RULES` name the same ops. Each case's sampler keeps inputs inside the op's
domain and away from its kinks (Relu at 0, Clip at its bounds, HardSwish at +-3, ...), so
central differences are exact up to O(eps^2). Models at old opsets (Clip attributes, Softmax
2-D coercion, Upsample, Pad/Slice/Split attributes, Reduce axes attributes) exercise the
opset conversion in `graph.prepare` as well as the rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from neuromask_onnx import oracle
from neuromask_onnx.gradcheck import check_vjp
from neuromask_onnx.vjp_rules import VJP_RULES, rule_key

D, F = TensorProto.DOUBLE, TensorProto.FLOAT
INT64_MAX = np.iinfo(np.int64).max
N = helper.make_node

Draw = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]


@dataclass(frozen=True)
class RuleCase:
    """One small model whose single rule-bearing op is `op_type` (after opset conversion)."""

    id: str
    op_type: str
    model: onnx.ModelProto
    sample: Callable[[np.random.Generator], dict[str, np.ndarray]]
    backend: Literal["reference", "onnxruntime"] = "reference"
    tol: float = 1e-6
    eps: float = 1e-6
    note: str = ""  # why a case runs in float32 on onnxruntime instead
    # Finite differences of this model instead of `model` (a convention, not a derivative:
    # the straight-through rule of a quantized model vs its dequantized float equivalent).
    reference: onnx.ModelProto | None = None
    skip: str = ""  # why nothing installed can be this case's oracle (neuromask_onnx.oracle)



# --------------------------------------------------------------------------- samplers


def normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape)


def positive(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(0.5, 2.0, shape)


def away(*kinks: float, scale: float = 1.0, margin: float = 0.05) -> Draw:
    """Normal samples (times `scale`) pushed at least `margin` away from every kink."""

    def draw(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        x = scale * rng.standard_normal(shape)
        for k in kinks:
            close = np.abs(x - k) < margin
            x = np.where(close, k + np.where(x >= k, margin, -margin) * 2, x)
        return x

    return draw


def distinct(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A permutation of well-separated values: no ties for max/min/argmax ops."""
    n = int(np.prod(shape))
    return (rng.permutation(n) * 0.1 - 0.05 * n + 0.03).reshape(shape)


# --------------------------------------------------------------------------- model builder


def case(
    id: str,
    op_type: str,
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, tuple[int, ...]],
    *,
    outputs: Sequence[str] = ("y",),
    draw: Draw | dict[str, Draw] = normal,
    inits: dict[str, Any] | None = None,
    int_feeds: dict[str, np.ndarray] | None = None,
    opset: int = 18,
    dtype: int = D,
    backend: Literal["reference", "onnxruntime"] = "reference",
    tol: float = 1e-6,
    eps: float = 1e-6,
    f32: str = "",
    piecewise_linear: bool = False,
) -> RuleCase:
    """Build a float model; float initializers take the model's dtype, ints stay int64.

    `f32="reason"` runs the case in float32 on onnxruntime (the reference evaluator cannot
    run it in float64, see the reason) with eps 1e-3 and a 2e-3 tolerance (a 1% error in a
    rule still fails); piecewise linear ops use eps 1e-2 there (central differences are exact
    between kinks, and a larger step drowns float32 rounding).
    """
    skip = ""
    fault = next(filter(None, map(oracle.reference_fault, nodes)), None)
    if fault is not None and backend == "reference" and not f32:
        # The installed onnx's reference evaluator is known wrong here (an older release than
        # the table was written for): onnxruntime's float32 kernels are the oracle instead.
        f32 = oracle.describe(fault)
        skip = "" if fault.ort_runs else f32
    if f32:
        dtype, backend, tol = F, "onnxruntime", max(tol, 2e-3)
        eps = max(eps, 1e-2 if piecewise_linear else 1e-3)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    init_protos = []
    for name, value in (inits or {}).items():
        arr = np.asarray(value)
        if arr.dtype == np.float64:  # float32 arrays (Resize scales) stay float32
            arr = arr.astype(np_dtype)
        init_protos.append(numpy_helper.from_array(arr, name))
    vis = [helper.make_tensor_value_info(k, dtype, list(s)) for k, s in inputs.items()]
    for k, v in (int_feeds or {}).items():
        vis.append(helper.make_tensor_value_info(k, TensorProto.INT64, list(v.shape)))
    outs = [helper.make_tensor_value_info(o, dtype, None) for o in outputs]
    graph = helper.make_graph(list(nodes), id, vis, outs, init_protos)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset > 18 else 8

    def sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
        feeds = {}
        for k, s in inputs.items():
            d = draw[k] if isinstance(draw, dict) else draw
            feeds[k] = d(rng, s).astype(np_dtype)
        feeds.update(int_feeds or {})
        return feeds

    return RuleCase(id, op_type, model, sample, backend, tol, eps, f32, skip=skip)


def unary(id: str, op_type: str, draw: Draw = normal, shape: tuple[int, ...] = (2, 3, 4),
          opset: int = 18, f32: str = "", **attrs: Any) -> RuleCase:
    return case(id, op_type, [N(op_type, ["x"], ["y"], **attrs)], {"x": shape}, draw=draw,
                opset=opset, f32=f32)


# Why some cases cannot run in float64 on onnx 1.23's reference evaluator:
REF_ERF_F32 = "reference Erf rounds through float32"
REF_MAXPOOL_PADS = "reference MaxPool swaps asymmetric pads between axes"
REF_CONVT_GROUPS = "reference ConvTranspose cannot reshape grouped weights"
REF_OLD_SOFTMAX = "reference Softmax-11 ignores the 2-D coercion (numpy and onnxruntime agree)"
CONVERTER_F32 = "version_converter writes float32 bounds into a float64 model"


def const_i64(name: str, values: Sequence[int]) -> onnx.NodeProto:
    return N("Constant", [], [name], value=numpy_helper.from_array(np.array(values, np.int64)))


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


W_RNG = _rng(1234)  # weights baked into the table: seeded, fixed per run


def w(*shape: int) -> np.ndarray:
    return W_RNG.standard_normal(shape)


# --------------------------------------------------------------------------- the table

CASES: list[RuleCase] = []
add = CASES.append

# ---- elementwise unary
for op, dr, extra in [
    ("Abs", away(0.0), {}),
    ("Sqrt", positive, {}),
    ("Log", positive, {}),
    ("Exp", normal, {}),
    ("Reciprocal", away(0.0, margin=0.3), {}),
    ("Neg", normal, {}),
    ("Sigmoid", normal, {}),
    ("Tanh", normal, {}),
    ("Relu", away(0.0), {}),
    ("Softplus", normal, {}),
    ("Softsign", normal, {}),
    ("Mish", normal, {}),
    ("Sin", normal, {}),
    ("Cos", normal, {}),
    ("Identity", normal, {}),
    ("Selu", away(0.0), {}),
    ("HardSwish", away(-3.0, 3.0, scale=3.0), {}),
]:
    add(unary(op.lower(), op, dr, **extra))
add(unary("leaky_relu", "LeakyRelu", away(0.0), alpha=0.1))
add(unary("elu", "Elu", away(0.0), alpha=0.7))
add(unary("selu_attrs", "Selu", away(0.0), alpha=1.3, gamma=0.9))
add(unary("erf", "Erf", normal, f32=REF_ERF_F32))
add(unary("celu", "Celu", away(0.0), alpha=0.8, f32="Celu is float32-only in the spec"))
add(unary("hard_sigmoid_default", "HardSigmoid", away(-2.5, 2.5, scale=3.0)))
add(unary("hard_sigmoid_attrs", "HardSigmoid", away(-4 / 3, 2.0, scale=2.0), alpha=0.3, beta=0.4))
add(unary("gelu_none", "Gelu", normal, opset=20, f32=REF_ERF_F32))
add(unary("gelu_tanh", "Gelu", normal, opset=20, approximate="tanh"))
add(unary("dropout", "Dropout", normal))
add(unary("dropout_opset9", "Dropout", normal, opset=9))
# Casting through float32 rounds: larger eps, looser tolerance (the functions are quadratic,
# so central differences have no truncation error, only float32 rounding).
add(case("cast_f32_f64_f32", "Cast",
         [N("Cast", ["x"], ["d"], to=D), N("Mul", ["d", "d"], ["s"]),
          N("Cast", ["s"], ["y"], to=F)],
         {"x": (3, 4)}, dtype=F, eps=1e-2, tol=1e-4))
add(case("cast_f64_f32_f64", "Cast",
         [N("Cast", ["x"], ["f"], to=F), N("Cast", ["f"], ["d"], to=D), N("Mul", ["d", "d"], ["y"])],
         {"x": (3, 4)}, eps=1e-2, tol=1e-4))
add(case("castlike", "CastLike",
         [N("CastLike", ["x", "t"], ["f"]), N("Mul", ["f", "f"], ["y"])],
         {"x": (3, 4)}, inits={"t": np.zeros(1)}, opset=15))

# ---- clip
add(case("clip_attrs_opset10", "Clip", [N("Clip", ["x"], ["y"], min=-0.5, max=0.7)], {"x": (3, 4)},
         draw=away(-0.5, 0.7), opset=10,
         f32=CONVERTER_F32, piecewise_linear=True))
add(case("clip_attrs_opset9_min_only", "Clip", [N("Clip", ["x"], ["y"], min=-0.3)], {"x": (3, 4)},
         draw=away(-0.3), opset=9,
         f32=CONVERTER_F32, piecewise_linear=True))
add(case("clip_inputs", "Clip", [N("Clip", ["x", "lo", "hi"], ["y"])], {"x": (3, 4)},
         inits={"lo": np.array(-0.5), "hi": np.array(0.7)}, draw=away(-0.5, 0.7)))
add(case("clip_min_only", "Clip", [N("Clip", ["x", "lo"], ["y"])], {"x": (3, 4)},
         inits={"lo": np.array(-0.2)}, draw=away(-0.2)))
add(case("clip_max_only", "Clip", [N("Clip", ["x", "", "hi"], ["y"])], {"x": (3, 4)},
         inits={"hi": np.array(0.4)}, draw=away(0.4)))
add(case("clip_no_bounds", "Clip", [N("Clip", ["x"], ["y"])], {"x": (3, 4)}))
# float32 takes another path: masks from HardSigmoid steps (graph.Emitter.step), which the
# float64 cases above never reach.
STEP_F32 = "float32 masks are HardSigmoid steps (Emitter.step), not Greater/Cast"
add(unary("relu_f32", "Relu", away(0.0), f32=STEP_F32))
add(unary("sigmoid_f32", "Sigmoid", normal, f32=STEP_F32))
add(case("clip_relu6_f32", "Clip", [N("Clip", ["x", "lo", "hi"], ["y"])], {"x": (3, 4)},
         inits={"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)},
         draw=away(0.0, 6.0, scale=4.0), f32=STEP_F32, piecewise_linear=True))
add(case("clip_min_only_f32", "Clip", [N("Clip", ["x", "lo"], ["y"])], {"x": (3, 4)},
         inits={"lo": np.array(-0.2, np.float32)}, draw=away(-0.2), f32=STEP_F32,
         piecewise_linear=True))
add(case("clip_max_only_f32", "Clip", [N("Clip", ["x", "", "hi"], ["y"])], {"x": (3, 4)},
         inits={"hi": np.array(0.4, np.float32)}, draw=away(0.4), f32=STEP_F32,
         piecewise_linear=True))

# ---- broadcasting binary / n-ary (both operands are inputs: both gradients are checked)
BCAST = {"a": (2, 3, 4), "b": (3, 1)}
for op in ("Add", "Sub", "Mul"):
    add(case(f"{op.lower()}_bcast", op, [N(op, ["a", "b"], ["y"])], BCAST))
    add(case(f"{op.lower()}_bcast_left", op, [N(op, ["a", "b"], ["y"])],
             {"a": (1, 4), "b": (2, 3, 1)}))
add(case("mul_per_channel_f32", "Mul", [N("Mul", ["a", "b"], ["y"])],
         {"a": (2, 3, 4, 5), "b": (2, 3, 1, 1)},
         f32="float32 sums [N,C,H,W] to [N,C,1,1] as GlobalAveragePool x H W (NCHWc)",
         piecewise_linear=True))
add(case("add_same_shape_const", "Add", [N("Add", ["a", "c"], ["y"])], {"a": (2, 3)},
         inits={"c": w(2, 3)}))
add(case("div_bcast", "Div", [N("Div", ["a", "b"], ["y"])], BCAST,
         draw={"a": normal, "b": away(0.0, margin=0.4)}))
add(case("div_scalar_denominator", "Div", [N("Div", ["a", "b"], ["y"])], {"a": (2, 3), "b": ()},
         draw={"a": normal, "b": positive}))
add(case("pow_bcast", "Pow", [N("Pow", ["a", "b"], ["y"])], BCAST, draw=positive))
add(case("pow_const_square", "Pow", [N("Pow", ["a", "e"], ["y"])], {"a": (2, 3)},
         inits={"e": np.array(2.0)}))
add(case("pow_const_cube", "Pow", [N("Pow", ["a", "e"], ["y"])], {"a": (2, 3)},
         inits={"e": np.array(3.0)}))
add(case("pow_int_exponent", "Pow", [N("Pow", ["a", "e"], ["y"])], {"a": (2, 3)},
         inits={"e": np.array(3, np.int64)}, draw=positive))
for op in ("Max", "Min"):
    add(case(f"{op.lower()}_bcast", op, [N(op, ["a", "b"], ["y"])], BCAST))
    add(case(f"{op.lower()}_three", op, [N(op, ["a", "b", "c"], ["y"])],
             {"a": (2, 3, 4), "b": (4,), "c": (2, 1, 4)}))
    add(case(f"{op.lower()}_single", op, [N(op, ["a"], ["y"])], {"a": (2, 3)}))
add(case("where_bcast", "Where", [N("Where", ["c", "a", "b"], ["y"])], {"a": (2, 1, 4), "b": (3, 1)},
         inits={"c": np.array([[True, False, True, True]] * 3)}))
add(case("prelu_channel", "PRelu", [N("PRelu", ["x", "s"], ["y"])], {"x": (2, 3, 4, 5), "s": (3, 1, 1)},
         draw={"x": away(0.0), "s": normal}))
add(case("prelu_scalar_slope", "PRelu", [N("PRelu", ["x", "s"], ["y"])], {"x": (2, 3), "s": (1,)},
         draw={"x": away(0.0), "s": normal}))
add(case("prelu_const_slope", "PRelu", [N("PRelu", ["x", "s"], ["y"])], {"x": (2, 3, 4)},
         inits={"s": w(4)}, draw=away(0.0)))
for op in ("Sum", "Mean"):
    add(case(f"{op.lower()}_bcast", op, [N(op, ["a", "b", "c"], ["y"])],
             {"a": (2, 3, 4), "b": (3, 1), "c": (4,)}))
    add(case(f"{op.lower()}_single", op, [N(op, ["a"], ["y"])], {"a": (2, 3)}))

# ---- linear algebra
for cid, sa, sb in [
    ("matmul_2d", (3, 4), (4, 5)),
    ("matmul_batched", (2, 3, 4), (2, 4, 5)),
    ("matmul_bcast_batch", (2, 1, 3, 4), (3, 4, 5)),
    ("matmul_bcast_2d_right", (2, 3, 4), (4, 5)),
    ("matmul_rank1_left", (4,), (2, 4, 5)),
    ("matmul_rank1_right", (2, 3, 4), (4,)),
    ("matmul_rank1_both", (4,), (4,)),
]:
    add(case(cid, "MatMul", [N("MatMul", ["a", "b"], ["y"])], {"a": sa, "b": sb}))
add(case("matmul_const_weight", "MatMul", [N("MatMul", ["a", "b"], ["y"])], {"a": (2, 3)},
         inits={"b": w(3, 2)}))
for cid, attrs, sa, sb, sc in [
    ("gemm_plain_c_row", {}, (3, 4), (4, 5), (5,)),
    ("gemm_transA", {"transA": 1}, (4, 3), (4, 5), (3, 5)),
    ("gemm_transB", {"transB": 1}, (3, 4), (5, 4), (3, 1)),
    ("gemm_both_alpha_beta", {"transA": 1, "transB": 1, "alpha": 0.7, "beta": -1.3},
     (4, 3), (5, 4), (1,)),
    ("gemm_c_scalar", {"beta": 2.0}, (3, 4), (4, 5), ()),
]:
    add(case(cid, "Gemm", [N("Gemm", ["a", "b", "c"], ["y"], **attrs)], {"a": sa, "b": sb, "c": sc}))
add(case("gemm_no_c", "Gemm", [N("Gemm", ["a", "b"], ["y"], alpha=1.5)], {"a": (3, 4), "b": (4, 2)}))
add(case("gemm_const_b", "Gemm", [N("Gemm", ["a", "b", "c"], ["y"], transB=1)], {"a": (2, 4)},
         inits={"b": w(3, 4), "c": w(3)}))

# ---- convolution (weights are constants; bias is an input where present, so it is checked)
X4 = (2, 4, 7, 6)
for cid, attrs, wshape in [
    ("conv_basic", {}, (3, 4, 3, 3)),
    ("conv_stride_asym_pads", {"strides": [2, 2], "pads": [0, 1, 2, 0]}, (3, 4, 3, 2)),
    ("conv_dilations", {"dilations": [2, 1], "pads": [1, 1, 1, 1]}, (3, 4, 3, 3)),
    ("conv_depthwise", {"group": 4, "strides": [2, 1], "pads": [1, 1, 1, 1]}, (4, 1, 3, 3)),
    ("conv_same_upper", {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (3, 4, 4, 3)),
    ("conv_same_lower", {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (3, 4, 4, 3)),
    ("conv_valid", {"auto_pad": "VALID", "strides": [3, 2]}, (3, 4, 2, 2)),
    ("conv_stride_leftover", {"strides": [3, 3]}, (2, 4, 2, 2)),
]:
    add(case(cid, "Conv", [N("Conv", ["x", "W"], ["y"], **attrs)], {"x": X4},
             inits={"W": w(*wshape)}))
# Strided depthwise convs take another route (zero insertion + stride-1 Conv): every geometry.
XD = (2, 4, 9, 8)
for cid, attrs, wshape in [
    ("conv_dw_s2_asym_pads", {"group": 4, "strides": [2, 2], "pads": [0, 0, 1, 1]}, (4, 1, 3, 3)),
    ("conv_dw_5x5_s2", {"group": 4, "strides": [2, 2], "pads": [2, 2, 2, 2]}, (4, 1, 5, 5)),
    ("conv_dw_s2_dilated", {"group": 4, "strides": [2, 2], "dilations": [2, 1],
                            "pads": [2, 1, 2, 1]}, (4, 1, 3, 3)),
    ("conv_dw_same_upper", {"group": 4, "strides": [2, 3], "auto_pad": "SAME_UPPER"}, (4, 1, 3, 3)),
    ("conv_dw_leftover", {"group": 4, "strides": [3, 3]}, (4, 1, 2, 2)),
    ("conv_dw_multiplier", {"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]}, (8, 1, 3, 3)),
]:
    add(case(cid, "Conv", [N("Conv", ["x", "W"], ["y"], **attrs)], {"x": XD},
             inits={"W": w(*wshape)}))
add(case("conv_dw_1d_s2", "Conv", [N("Conv", ["x", "W"], ["y"], group=3, strides=[2], pads=[1, 2])],
         {"x": (2, 3, 10)}, inits={"W": w(3, 1, 4)}))
add(case("conv_dw_s2_f32", "Conv", [N("Conv", ["x", "W"], ["y"], group=4, strides=[2, 2],
                                      pads=[1, 1, 1, 1])],
         {"x": XD}, inits={"W": w(4, 1, 3, 3)}, f32="onnxruntime, where the route is fast",
         piecewise_linear=True))
add(case("conv_groups", "Conv", [N("Conv", ["x", "W"], ["y"], group=2, pads=[1, 0, 1, 0])],
         {"x": X4}, inits={"W": w(6, 2, 3, 3)}, f32=REF_CONVT_GROUPS, piecewise_linear=True))
add(case("conv_bias", "Conv", [N("Conv", ["x", "W", "b"], ["y"], pads=[1, 1, 1, 1])],
         {"x": X4, "b": (3,)}, inits={"W": w(3, 4, 3, 3)}))
add(case("conv_1d", "Conv", [N("Conv", ["x", "W", "b"], ["y"], strides=[2], pads=[2, 1],
                               dilations=[2])],
         {"x": (2, 3, 11), "b": (5,)}, inits={"W": w(5, 3, 3)}))
add(case("conv_3d", "Conv", [N("Conv", ["x", "W"], ["y"], strides=[1, 2, 1], pads=[1] * 6)],
         {"x": (1, 2, 4, 5, 3)}, inits={"W": w(2, 2, 3, 3, 3)}))
add(case("conv_const_bias", "Conv", [N("Conv", ["x", "W", "b"], ["y"])], {"x": X4},
         inits={"W": w(3, 4, 1, 1), "b": w(3)}))
for cid, attrs, wshape in [
    ("convtranspose_basic", {}, (4, 3, 3, 3)),
    ("convtranspose_strides_pads", {"strides": [2, 2], "pads": [1, 0, 1, 2]}, (4, 3, 3, 3)),
    ("convtranspose_output_padding", {"strides": [2, 3], "output_padding": [1, 2]}, (4, 2, 3, 3)),
    ("convtranspose_dilations", {"dilations": [2, 2]}, (4, 3, 2, 2)),
]:
    add(case(cid, "ConvTranspose", [N("ConvTranspose", ["x", "W"], ["y"], **attrs)], {"x": X4},
             inits={"W": w(*wshape)}))
add(case("convtranspose_groups", "ConvTranspose",
         [N("ConvTranspose", ["x", "W"], ["y"], group=2, strides=[2, 1], pads=[1, 1, 0, 0])],
         {"x": X4}, inits={"W": w(4, 3, 3, 2)}, f32=REF_CONVT_GROUPS, piecewise_linear=True))
add(case("convtranspose_output_shape", "ConvTranspose",
         [N("ConvTranspose", ["x", "W"], ["y"], strides=[2, 2], output_shape=[14, 13])],
         {"x": X4}, inits={"W": w(4, 3, 3, 3)}, f32="reference ConvTranspose rejects output_shape", piecewise_linear=True))
add(case("convtranspose_bias", "ConvTranspose",
         [N("ConvTranspose", ["x", "W", "b"], ["y"], strides=[2, 2])],
         {"x": (1, 2, 3, 4), "b": (3,)}, inits={"W": w(2, 3, 2, 2)}))

# ---- pooling (distinct values: no ties within a window, so MaxPool is smooth)
P4 = (2, 3, 7, 6)
for cid, attrs in [
    ("maxpool_basic", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("maxpool_ceil_mode", {"kernel_shape": [3, 2], "strides": [2, 2], "ceil_mode": 1}),
    ("maxpool_dilations", {"kernel_shape": [2, 2], "dilations": [2, 2], "strides": [1, 2]}),
    ("maxpool_same_upper", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
]:
    add(case(cid, "MaxPool", [N("MaxPool", ["x"], ["y"], **attrs)], {"x": P4}, draw=distinct))
add(case("maxpool_1d", "MaxPool", [N("MaxPool", ["x"], ["y"], kernel_shape=[3], strides=[2])],
         {"x": (2, 3, 9)}, draw=distinct))
add(case("maxpool_pads_symmetric", "MaxPool",
         [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 1])],
         {"x": P4}, draw=distinct))
add(case("maxpool_pads", "MaxPool", [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3],
                                       pads=[1, 0, 1, 2])],
         {"x": P4}, draw=distinct, f32=REF_MAXPOOL_PADS, piecewise_linear=True))
add(case("maxpool_indices_output", "MaxPool",
         [N("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], pads=[1, 1, 0, 0])], {"x": P4},
         draw=distinct, f32=REF_MAXPOOL_PADS, piecewise_linear=True))
for cid, attrs in [
    ("avgpool_basic", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("avgpool_pads_exclude", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                              "count_include_pad": 0}),
    ("avgpool_pads_include", {"kernel_shape": [3, 3], "pads": [1, 0, 2, 1],
                              "count_include_pad": 1}),
    ("avgpool_ceil_mode", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ("avgpool_ceil_pads_include", {"kernel_shape": [3, 2], "strides": [2, 3], "ceil_mode": 1,
                                   "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ("avgpool_same_upper", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ("avgpool_kernel1", {"kernel_shape": [1, 1]}),
]:
    add(case(cid, "AveragePool", [N("AveragePool", ["x"], ["y"], **attrs)], {"x": P4}))
add(case("avgpool_1d", "AveragePool",
         [N("AveragePool", ["x"], ["y"], kernel_shape=[3], strides=[2], pads=[1, 1])],
         {"x": (2, 3, 8)}))
add(case("global_avgpool", "GlobalAveragePool", [N("GlobalAveragePool", ["x"], ["y"])], {"x": P4}))
add(case("global_avgpool_f32", "GlobalAveragePool", [N("GlobalAveragePool", ["x"], ["y"])],
         {"x": P4}, f32="float32 4-D scales by a depthwise Conv (onnxruntime keeps it in NCHWc)",
         piecewise_linear=True))
add(case("global_maxpool", "GlobalMaxPool", [N("GlobalMaxPool", ["x"], ["y"])], {"x": P4},
         draw=distinct))

# ---- reductions: axes as input (opset 18), as attribute (converted), all axes, no-op
REDUCE_OPS = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSumExp"]
R3 = (2, 3, 4)
for op in REDUCE_OPS:
    dr = distinct if op in ("ReduceMax", "ReduceMin", "ReduceL1") else normal
    attr_opset = 11 if op == "ReduceSum" else 13  # the last opset with an `axes` attribute
    tag = op[6:].lower()
    add(case(f"reduce_{tag}_axes_input_keep1", op, [N(op, ["x", "ax"], ["y"], keepdims=1)],
             {"x": R3}, inits={"ax": np.array([1, -1])}, draw=dr))
    add(case(f"reduce_{tag}_axes_input_keep0", op, [N(op, ["x", "ax"], ["y"], keepdims=0)],
             {"x": R3}, inits={"ax": np.array([0])}, draw=dr))
    add(case(f"reduce_{tag}_axes_attr_opset{attr_opset}", op,
             [N(op, ["x"], ["y"], axes=[-2], keepdims=0)], {"x": R3}, draw=dr, opset=attr_opset))
    add(case(f"reduce_{tag}_all_axes", op, [N(op, ["x"], ["y"], keepdims=0)], {"x": R3}, draw=dr))
add(case("reduce_sum_noop_empty_axes", "ReduceSum",
         [N("ReduceSum", ["x"], ["y"], noop_with_empty_axes=1)], {"x": R3}))
add(case("reduce_l1_noop_empty_axes", "ReduceL1",
         [N("ReduceL1", ["x"], ["y"], noop_with_empty_axes=1)], {"x": R3}, draw=away(0.0)))

# ---- normalization
add(case("batchnorm", "BatchNormalization",
         [N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)], {"x": P4},
         inits={"s": w(3), "b": w(3), "m": w(3), "v": np.abs(w(3)) + 0.5}, opset=15))
add(case("batchnorm_opset9", "BatchNormalization",
         [N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])], {"x": (2, 3, 5)},
         inits={"s": w(3), "b": w(3), "m": w(3), "v": np.abs(w(3)) + 0.5}, opset=9,
         f32="reference BatchNormalization-9 is wrong on 3-D inputs (numpy and onnxruntime agree)"))
add(case("instancenorm", "InstanceNormalization",
         [N("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-3)], {"x": P4},
         inits={"s": w(3), "b": w(3)}))
for cid, axis, sshape in [("layernorm_last", -1, (4,)), ("layernorm_axis1", 1, (3, 4)),
                          ("layernorm_axis_neg2", -2, (3, 4))]:
    add(case(cid, "LayerNormalization",
             [N("LayerNormalization", ["x", "s", "b"], ["y"], axis=axis, epsilon=1e-3)],
             {"x": R3}, inits={"s": w(*sshape), "b": w(*sshape)}))
add(case("layernorm_no_bias", "LayerNormalization",
         [N("LayerNormalization", ["x", "s"], ["y"])], {"x": R3}, inits={"s": w(4)}))
add(case("groupnorm", "GroupNormalization",
         [N("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2, epsilon=1e-3, stash_type=D)],
         {"x": (2, 4, 3, 2)}, inits={"s": w(4), "b": w(4)}, opset=21))

# ---- softmax: opset 11 coerces to 2-D at `axis`; opset 13+ normalizes one axis
for op in ("Softmax", "LogSoftmax"):
    t = op.lower()
    add(case(f"{t}_opset11_axis1", op, [N(op, ["x"], ["y"], axis=1)], {"x": R3}, opset=11,
             f32=REF_OLD_SOFTMAX))
    add(case(f"{t}_opset11_default", op, [N(op, ["x"], ["y"])], {"x": R3}, opset=11,
             f32=REF_OLD_SOFTMAX))
    add(case(f"{t}_opset11_axis_neg1", op, [N(op, ["x"], ["y"], axis=-1)], {"x": R3}, opset=11))
    add(case(f"{t}_opset13_axis1", op, [N(op, ["x"], ["y"], axis=1)], {"x": R3}, opset=13))
    add(case(f"{t}_default_axis", op, [N(op, ["x"], ["y"])], {"x": R3}))
    add(case(f"{t}_axis0", op, [N(op, ["x"], ["y"], axis=0)], {"x": R3}))

# ---- shape ops
add(case("reshape", "Reshape", [N("Reshape", ["x", "s"], ["y"]), N("Mul", ["y", "y"], ["z"])],
         {"x": R3}, inits={"s": np.array([0, -1, 2])}, outputs=["z"]))
add(case("flatten_axis2", "Flatten", [N("Flatten", ["x"], ["y"], axis=2)], {"x": (2, 3, 4, 2)}))
add(case("flatten_opset9", "Flatten", [N("Flatten", ["x"], ["y"])], {"x": R3}, opset=9))
add(case("squeeze_axes_input", "Squeeze", [N("Squeeze", ["x", "ax"], ["y"])], {"x": (2, 1, 3, 1)},
         inits={"ax": np.array([1, -1])}))
add(case("squeeze_attr_opset11", "Squeeze", [N("Squeeze", ["x"], ["y"], axes=[1])],
         {"x": (2, 1, 3)}, opset=11))
add(case("squeeze_all", "Squeeze", [N("Squeeze", ["x"], ["y"])], {"x": (1, 3, 1)}))
add(case("unsqueeze_axes_input", "Unsqueeze", [N("Unsqueeze", ["x", "ax"], ["y"])], {"x": (2, 3)},
         inits={"ax": np.array([0, -1])}))
add(case("unsqueeze_attr_opset11", "Unsqueeze", [N("Unsqueeze", ["x"], ["y"], axes=[1])],
         {"x": (2, 3)}, opset=11))
add(case("transpose_perm", "Transpose", [N("Transpose", ["x"], ["y"], perm=[1, 2, 0])], {"x": R3}))
add(case("transpose_default", "Transpose", [N("Transpose", ["x"], ["y"])], {"x": R3}))
add(case("expand", "Expand", [N("Expand", ["x", "s"], ["y"])], {"x": (3, 1)},
         inits={"s": np.array([2, 3, 4])}))
add(case("expand_same_rank", "Expand", [N("Expand", ["x", "s"], ["y"])], {"x": (1, 3, 1)},
         inits={"s": np.array([2, 1, 4])}))
add(case("tile", "Tile", [N("Tile", ["x", "r"], ["y"])], {"x": (2, 3)},
         inits={"r": np.array([2, 3])}))
add(case("concat_with_const", "Concat", [N("Concat", ["a", "c", "b"], ["y"], axis=1)],
         {"a": (2, 1, 3), "b": (2, 4, 3)}, inits={"c": w(2, 2, 3)}))
add(case("concat_neg_axis", "Concat", [N("Concat", ["a", "b"], ["y"], axis=-1)],
         {"a": (2, 3), "b": (2, 2)}))
add(case("split_sizes_input", "Split",
         [N("Split", ["x", "s"], ["p", "q", "r"], axis=1), N("Mul", ["p", "r"], ["y"])],
         {"x": (2, 5, 3)}, inits={"s": np.array([2, 1, 2])}))  # q is unused
add(case("split_num_outputs", "Split", [N("Split", ["x"], ["p", "q"], axis=-1, num_outputs=2)],
         {"x": (2, 3, 4)}, outputs=["p", "q"]))
add(case("split_equal_opset13_unused", "Split", [N("Split", ["x"], ["p", "q", "r"], axis=0)],
         {"x": (3, 2)}, opset=13, outputs=["r"]))
add(case("split_attr_opset11", "Split", [N("Split", ["x"], ["p", "q"], axis=1, split=[1, 3])],
         {"x": (2, 4)}, opset=11, outputs=["p", "q"]))
add(case("slice_step2", "Slice", [N("Slice", ["x", "s", "e", "a", "t"], ["y"])], {"x": (3, 7, 4)},
         inits={"s": np.array([1]), "e": np.array([7]), "a": np.array([1]), "t": np.array([2])}))
add(case("slice_step_neg1", "Slice", [N("Slice", ["x", "s", "e", "a", "t"], ["y"])],
         {"x": (3, 5, 4)}, inits={"s": np.array([-1, 3]), "e": np.array([-INT64_MAX, 0]),
                                  "a": np.array([1, 2]), "t": np.array([-1, -2])}))
add(case("slice_negative_int64max", "Slice", [N("Slice", ["x", "s", "e", "a"], ["y"])],
         {"x": (3, 5, 4)}, inits={"s": np.array([-3, 1]), "e": np.array([INT64_MAX, -1]),
                                  "a": np.array([-2, 0])}))
add(case("slice_no_axes", "Slice", [N("Slice", ["x", "s", "e"], ["y"])], {"x": (4, 5)},
         inits={"s": np.array([1, 0]), "e": np.array([3, 4])}))
add(case("slice_bounds_from_shape", "Slice",
         [N("Shape", ["x"], ["shp"]), const_i64("i2", [2]), N("Gather", ["shp", "i2"], ["n"]),
          const_i64("one", [1]), N("Sub", ["n", "one"], ["e"]),
          N("Div", ["n", "two"], ["half"]),
          N("Slice", ["x", "one", "e", "i2"], ["y"]),
          N("Slice", ["x", "half", "n", "i2"], ["z"])],
         {"x": (2, 3, 6)}, inits={"two": np.array([2])}, outputs=["y", "z"]))
add(case("slice_attrs_opset9", "Slice",
         [N("Slice", ["x"], ["y"], starts=[1, -3], ends=[3, 1000], axes=[0, 1])], {"x": (4, 5)},
         opset=9))
add(case("gather_scalar_index", "Gather", [N("Gather", ["x", "i"], ["y"], axis=1)], {"x": R3},
         inits={"i": np.array(2)}))
add(case("gather_scalar_negative", "Gather", [N("Gather", ["x", "i"], ["y"])], {"x": R3},
         inits={"i": np.array(-1)}))
add(case("gather_tensor_index_repeats", "Gather", [N("Gather", ["x", "i"], ["y"])], {"x": (4, 3)},
         inits={"i": np.array([[0, 3], [3, -4]])}))
add(case("gather_axis2_negative", "Gather", [N("Gather", ["x", "i"], ["y"], axis=-1)],
         {"x": (2, 3, 4)}, inits={"i": np.array([-1, 0, -1])}))
add(case("gather_runtime_index", "Gather", [N("Gather", ["x", "i"], ["y"], axis=1)],
         {"x": (2, 4, 3)}, int_feeds={"i": np.array([[1, -1, 1], [0, 2, 3]])}))
add(case("gather_elements", "GatherElements", [N("GatherElements", ["x", "i"], ["y"], axis=1)],
         {"x": (2, 4, 3)}, inits={"i": np.array([[[0, 3, 3]] * 5, [[1, -1, 0]] * 5])}))
add(case("gather_elements_axis0", "GatherElements", [N("GatherElements", ["x", "i"], ["y"])],
         {"x": (3, 2)}, int_feeds={"i": np.array([[0, 2], [0, 0], [-1, 1], [2, 2]])}))
add(case("topk_last_axis", "TopK", [N("TopK", ["x", "k"], ["y", "idx"])], {"x": (2, 3, 5)},
         inits={"k": np.array([2])}, draw=distinct))
add(case("topk_smallest_axis1", "TopK", [N("TopK", ["x", "k"], ["y", "idx"], axis=1, largest=0)],
         {"x": (2, 5, 3)}, inits={"k": np.array([3])}, draw=distinct))
add(case("pad_constant", "Pad", [N("Pad", ["x", "p", "v"], ["y"])], {"x": R3},
         inits={"p": np.array([0, 1, 2, 1, 0, 3]), "v": np.array(1.5)}))
add(case("pad_negative", "Pad", [N("Pad", ["x", "p"], ["y"])], {"x": (2, 5, 4)},
         inits={"p": np.array([0, -1, 2, 0, 1, -2])},
         f32="reference Pad rejects negative pads", piecewise_linear=True))
add(case("pad_axes_input", "Pad", [N("Pad", ["x", "p", "", "ax"], ["y"], mode="edge")], {"x": R3},
         inits={"p": np.array([2, 1, 0, 3]), "ax": np.array([-1, 1])}))
for mode, opset in [("reflect", 18), ("edge", 18), ("wrap", 19)]:
    add(case(f"pad_{mode}", "Pad", [N("Pad", ["x", "p"], ["y"], mode=mode)], {"x": (2, 4, 5)},
             inits={"p": np.array([0, 3, 2, 0, 1, 4])}, opset=opset))
add(case("pad_attr_opset10", "Pad", [N("Pad", ["x"], ["y"], pads=[0, 1, 2, 0], value=0.5)],
         {"x": (3, 4)}, opset=10, f32=CONVERTER_F32, piecewise_linear=True))
add(case("pad_reflect_attr_opset10", "Pad", [N("Pad", ["x"], ["y"], pads=[1, 2, 2, 1],
                                                mode="reflect")], {"x": (4, 5)}, opset=10))

# ---- resize (the rule reads its interpolation matrix off onnxruntime's Resize)
RX = (1, 2, 4, 3)


def resize(cid: str, scales: Sequence[float] | None = None, sizes: Sequence[int] | None = None,
           opset: int = 18, **attrs: Any) -> RuleCase:
    inits: dict[str, Any] = {}
    if scales is not None:
        inits["sc"] = np.array(scales, np.float32)
        ins = ["x", "", "sc"]
    else:
        inits["sz"] = np.array(sizes, np.int64)
        ins = ["x", "", "", "sz"]
    return case(cid, "Resize", [N("Resize", ins, ["y"], **attrs)], {"x": RX}, inits=inits,
                opset=opset)


add(resize("resize_nearest_x2", scales=[1, 1, 2, 2], mode="nearest"))
add(resize("resize_nearest_asym_floor", scales=[1, 1, 2, 3], mode="nearest",
           coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
add(resize("resize_nearest_sizes_down", sizes=[1, 2, 3, 2], mode="nearest"))
add(resize("resize_linear_half_pixel", scales=[1, 1, 2, 2], mode="linear"))
add(resize("resize_linear_align_corners", sizes=[1, 2, 7, 5], mode="linear",
           coordinate_transformation_mode="align_corners"))
add(resize("resize_linear_asymmetric", scales=[1, 1, 1.5, 2], mode="linear",
           coordinate_transformation_mode="asymmetric"))
add(resize("resize_linear_pytorch_half_pixel", sizes=[1, 2, 1, 6], mode="linear",
           coordinate_transformation_mode="pytorch_half_pixel"))
add(resize("resize_linear_down", scales=[1, 1, 0.5, 0.75], mode="linear"))
add(resize("resize_cubic", scales=[1, 1, 2, 2], mode="cubic"))
add(case("resize_axes_attr", "Resize", [N("Resize", ["x", "", "sc"], ["y"], mode="linear",
                                              axes=[3, 2])],
         {"x": RX}, inits={"sc": np.array([2.0, 1.5], np.float32)}, opset=18))
add(case("upsample_nearest_opset9", "Resize",
         [N("Upsample", ["x", "sc"], ["y"], mode="nearest")], {"x": RX},
         inits={"sc": np.array([1, 1, 2, 2], np.float32)}, opset=9))
add(case("upsample_linear_opset9", "Resize",
         [N("Upsample", ["x", "sc"], ["y"], mode="linear")], {"x": RX},
         inits={"sc": np.array([1, 1, 2, 2], np.float32)}, opset=9,
         f32="reference Upsample has no linear mode", piecewise_linear=True))
add(case("upsample_nearest_x3_opset9", "Resize",
         [N("Upsample", ["x", "sc"], ["y"], mode="nearest")], {"x": RX},
         inits={"sc": np.array([1, 1, 3, 1.5], np.float32)}, opset=9,
         f32="reference Upsample supports integer scales only", piecewise_linear=True))
# Resize-10 samples asymmetrically (the converter must say so when it moves it to opset 11+).
for mode, scales in [("nearest", [1, 1, 0.5, 1.5]), ("linear", [1, 1, 0.5, 1.7])]:
    add(case(f"resize_opset10_{mode}_down", "Resize", [N("Resize", ["x", "sc"], ["y"], mode=mode)],
             {"x": (1, 2, 6, 4)}, inits={"sc": np.array(scales, np.float32)}, opset=10,
             f32="onnxruntime defines Resize-10's sampling", piecewise_linear=True))

# ---- space/depth, einsum, cumsum
for mode in ("DCR", "CRD"):
    add(case(f"depth_to_space_{mode.lower()}", "DepthToSpace",
             [N("DepthToSpace", ["x"], ["y"], blocksize=2, mode=mode)], {"x": (2, 8, 2, 3)}))
add(case("space_to_depth", "SpaceToDepth", [N("SpaceToDepth", ["x"], ["y"], blocksize=2)],
         {"x": (2, 3, 4, 6)}))
for cid, eq, sa, sb in [
    ("einsum_matmul", "ij,jk->ik", (3, 4), (4, 5)),
    ("einsum_batched", "bij,bjk->bik", (2, 3, 4), (2, 4, 5)),
    ("einsum_ellipsis", "...ij,...jk->...ik", (2, 3, 4), (1, 4, 5)),
    ("einsum_ellipsis_right_aligned", "...ij,jk->...ik", (2, 2, 3, 4), (4, 5)),
    ("einsum_operand_only_index", "ij,kl->ik", (3, 4), (2, 5)),
    ("einsum_implicit_output", "ij,jk", (3, 4), (4, 2)),
    ("einsum_outer_transpose", "i,j->ji", (3,), (4,)),
]:
    add(case(cid, "Einsum", [N("Einsum", ["a", "b"], ["y"], equation=eq)], {"a": sa, "b": sb},
             opset=12 if cid == "einsum_implicit_output" else 18))
add(case("einsum_unary_trace_free", "Einsum", [N("Einsum", ["a"], ["y"], equation="ijk->ki")],
         {"a": R3}))
for cid, attrs in [("cumsum", {}), ("cumsum_exclusive", {"exclusive": 1}),
                   ("cumsum_reverse", {"reverse": 1}),
                   ("cumsum_exclusive_reverse", {"exclusive": 1, "reverse": 1})]:
    add(case(cid, "CumSum", [N("CumSum", ["x", "ax"], ["y"], **attrs)], {"x": R3},
             inits={"ax": np.array(-2)}))


# ---- HardSwish float32 4-D (issue 16, h6-speed): depthwise 1x1 Convs + Clip, NCHWc route
add(case("hard_swish_f32_nchwc", "HardSwish", [N("HardSwish", ["x"], ["y"])], {"x": (2, 3, 4, 5)},
         draw=away(-3.0, 3.0, scale=3.0),
         f32="float32 4-D HardSwish derivative: depthwise Convs with Clip (onnxruntime NCHWc)"))


# ---- LRN (the ONNX Model Zoo's AlexNet, ZFNet-512, Inception v1). onnx 1.23's reference LRN
# loops over the batch axis where it means the channels, so the float64 cases take N = C
# (then it is right); the float32 case on onnxruntime (odd sizes only) has N != C.
REF_LRN_BATCH = "reference LRN loops over the batch axis instead of the channels"
for cid, shape, attrs in [
    ("lrn_size3_defaults", (4, 4, 2, 3), {"size": 3}),
    ("lrn_size5_wide", (3, 3, 2, 2), {"size": 5, "alpha": 0.5, "beta": 0.75, "bias": 2.0}),
    ("lrn_size4_even", (5, 5, 2, 1), {"size": 4, "alpha": 0.3, "beta": 0.6, "bias": 1.5}),
    ("lrn_size2_even_beta1", (4, 4, 1, 3), {"size": 2, "alpha": 1.0, "beta": 1.0, "bias": 0.5}),
]:
    add(case(cid, "LRN", [N("LRN", ["x"], ["y"], **attrs)], {"x": shape}))
add(case("lrn_size5_f32_batch1", "LRN",
         [N("LRN", ["x"], ["y"], size=5, alpha=0.4, beta=0.75, bias=1.0)], {"x": (1, 7, 3, 2)},
         f32=REF_LRN_BATCH))

# ---- the ONNX conformance cases' forms (tests/test_conformance.py). SpaceToDepth's mode and
# float Mod with fmod=0 exist from opset 28 only (before it onnxruntime refuses both, and the
# load-time validation with it), so these cases are at opset 28, as the conformance cases are.
add(case("space_to_depth_crd", "SpaceToDepth",
         [N("SpaceToDepth", ["x"], ["y"], blocksize=2, mode="CRD")], {"x": (2, 3, 4, 6)},
         opset=28))


def off_integers(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """a / b kept away from integers for Mod (b drawn in [1, 2] by `in_1_2`)."""
    return (rng.integers(-4, 4, shape) + rng.uniform(0.2, 0.8, shape)) * 1.5


def in_1_2(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(1.0, 1.45, shape)


def scalar(value: float) -> Draw:
    return lambda _rng, shape: np.full(shape, value)


# Mod on floats: both operands are inputs; a / b stays off the integers (its jumps).
for fmod in (0, 1):
    add(case(f"mod_fmod{fmod}", "Mod", [N("Mod", ["a", "b"], ["y"], fmod=fmod)],
             {"a": (3, 4), "b": (4,)}, draw={"a": off_integers, "b": in_1_2},
             opset=28 if fmod == 0 else 18))
# Operands read for their type only, computed from the data: a zero gradient (the driver
# passes them over, vjp_rules.NONDIFF_OPERANDS), as in function-expanded graphs.
add(case("castlike_like_from_data", "CastLike",
         [N("Mul", ["x", "x"], ["t"]), N("CastLike", ["x", "t"], ["f"]),
          N("Mul", ["f", "x"], ["y"])], {"x": (3, 4)}, opset=15))
add(case("dropout_ratio_input", "Dropout", [N("Dropout", ["x", "r"], ["y"])],
         {"x": (3, 4), "r": ()}, draw={"x": normal, "r": scalar(0.3)}))
# ConvTranspose with an output_shape past the windows' span (negative pads, conformance case
# test_convtranspose_output_shape): the bias reaches the extra positions, the input not.
add(case("convtranspose_output_shape_beyond_span", "ConvTranspose",
         [N("ConvTranspose", ["x", "W", "b"], ["y"], strides=[3, 2], output_shape=[10, 8])],
         {"x": (1, 1, 3, 3), "b": (2,)}, inits={"W": w(1, 2, 3, 3)},
         f32="reference ConvTranspose rejects output_shape", piecewise_linear=True))
# Clip bounds that are inputs get their gradient where they are the output.
add(case("clip_bounds_differentiated", "Clip", [N("Clip", ["x", "lo", "hi"], ["y"])],
         {"x": (4, 5), "lo": (), "hi": ()},
         draw={"x": away(-0.5, 0.7), "lo": scalar(-0.5), "hi": scalar(0.7)}))
add(case("clip_min_above_max", "Clip", [N("Clip", ["x", "lo", "hi"], ["y"])],
         {"x": (4, 5), "lo": (), "hi": ()},
         draw={"x": away(0.3), "lo": scalar(0.3), "hi": scalar(-0.2)}))

# ---- arith: Tan, inverse trigonometric / hyperbolic, Shrink, ThresholdedRelu, Swish


def in_unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(-0.9, 0.9, shape)


def above_one(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(1.1, 3.0, shape)


for op, dr in [("Tan", in_unit), ("Asin", in_unit), ("Acos", in_unit), ("Atan", normal),
               ("Sinh", normal), ("Cosh", normal), ("Asinh", normal), ("Acosh", above_one),
               ("Atanh", in_unit)]:
    add(unary(op.lower(), op, dr))
add(unary("shrink_default", "Shrink", away(-0.5, 0.5)))
add(unary("shrink_bias", "Shrink", away(-1.0, 1.0, scale=2.0), lambd=1.0, bias=0.3))
add(unary("thresholded_relu", "ThresholdedRelu", away(0.4), alpha=0.4))
add(unary("swish_alpha", "Swish", normal, opset=24, alpha=1.7))
add(unary("swish_default", "Swish", normal, opset=24))

# ---- normalisation and reductions the conformance cases use
add(case("reduce_logsum_axes_input", "ReduceLogSum",
         [N("ReduceLogSum", ["x", "ax"], ["y"], keepdims=0)], {"x": R3},
         inits={"ax": np.array([1])}, draw=positive))
add(case("reduce_logsum_all_axes", "ReduceLogSum", [N("ReduceLogSum", ["x"], ["y"])],
         {"x": R3}, draw=positive))
add(case("reduce_logsum_noop_empty_axes", "ReduceLogSum",
         [N("ReduceLogSum", ["x"], ["y"], noop_with_empty_axes=1)], {"x": R3}, draw=positive))
LN_STASH = "LayerNormalization's Mean / InvStdDev are float32 (stash_type) whatever x is"
add(case("layernorm_mean_invstd_outputs", "LayerNormalization",
         [N("LayerNormalization", ["x", "s", "b"], ["y", "m", "i"], axis=1, epsilon=1e-3)],
         {"x": R3}, outputs=("y", "m", "i"), inits={"s": w(3, 4), "b": w(3, 4)}, f32=LN_STASH))
add(case("layernorm_invstd_output_only", "LayerNormalization",
         [N("LayerNormalization", ["x", "s"], ["y", "", "i"], axis=-1)],
         {"x": R3}, outputs=("i",), inits={"s": w(4)}, f32=LN_STASH))
for cid, attrs in [("rms_norm_last_axis", {}), ("rms_norm_axis1", {"axis": 1, "epsilon": 1e-2})]:
    add(case(cid, "RMSNormalization", [N("RMSNormalization", ["x", "s"], ["y"], **attrs)],
             {"x": R3}, inits={"s": w(4) if not attrs else w(3, 4)}, opset=23))
add(case("lp_norm_p2", "LpNormalization", [N("LpNormalization", ["x"], ["y"], axis=1)],
         {"x": R3}))
add(case("lp_norm_p1", "LpNormalization", [N("LpNormalization", ["x"], ["y"], p=1)], {"x": R3},
         draw=away(0.0), f32="reference LpNormalization p=1 sums x, not |x|"))

# ---- recurrent (LSTM, GRU, RNN): x and the initial states are inputs, so all their gradients
# are checked. onnx's reference evaluator ignores sequence_lens, clip, activations and
# input_forget, and onnxruntime has no layout-1 kernels: each variant runs where its forward
# is right (float64 reference, else float32 onnxruntime).
REF_RNN_ATTRS = "reference LSTM/GRU/RNN ignore sequence_lens, clip, activations, input_forget"
RNN_T, RNN_B, RNN_I, RNN_H = 3, 2, 3, 4
RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent(cid: str, kind: str, *, direction: str = "forward", layout: int = 0,
              lens: Sequence[int] | None = None, states: bool = False, peepholes: bool = False,
              bias: bool = True, f32: str = "", **attrs: Any) -> RuleCase:
    g, d = RNN_GATES[kind], 2 if direction == "bidirectional" else 1
    inits: dict[str, Any] = {"W": 0.5 * w(d, g * RNN_H, RNN_I), "R": 0.5 * w(d, g * RNN_H, RNN_H)}
    names = ["x", "W", "R", "B" if bias else "", "L" if lens is not None else ""]
    if bias:
        inits["B"] = 0.5 * w(d, 2 * g * RNN_H)
    if lens is not None:
        inits["L"] = np.array(lens, np.int32)
    xs = (RNN_B, RNN_T, RNN_I) if layout else (RNN_T, RNN_B, RNN_I)
    ss = (RNN_B, d, RNN_H) if layout else (d, RNN_B, RNN_H)
    inputs = {"x": xs}
    if states:
        inputs["h0"] = ss
        if kind == "LSTM":
            inputs["c0"] = ss
    names += ["h0" if states else ""]
    if kind == "LSTM":
        names += ["c0" if states else "", "P" if peepholes else ""]
        if peepholes:
            inits["P"] = 0.5 * w(d, 3 * RNN_H)
    while names[-1] == "":
        names.pop()
    outs = ("y", "yh", "yc") if kind == "LSTM" else ("y", "yh")
    node = N(kind, names, list(outs), hidden_size=RNN_H, direction=direction, layout=layout,
             **attrs)
    return case(cid, kind, [node], inputs, outputs=outs, inits=inits, f32=f32)


for kind in ("LSTM", "GRU", "RNN"):
    k = kind.lower()
    add(recurrent(f"{k}_forward", kind))
    add(recurrent(f"{k}_reverse", kind, direction="reverse"))
    add(recurrent(f"{k}_bidirectional_states", kind, direction="bidirectional", states=True))
    add(recurrent(f"{k}_layout1", kind, layout=1))
    add(recurrent(f"{k}_layout1_bidirectional_states", kind, layout=1, direction="bidirectional",
                  states=True))
    add(recurrent(f"{k}_no_bias", kind, bias=False))
    add(recurrent(f"{k}_sequence_lens", kind, lens=[3, 1], states=True, f32=REF_RNN_ATTRS))
    add(recurrent(f"{k}_sequence_lens_bidirectional", kind, lens=[2, 3],
                  direction="bidirectional", f32=REF_RNN_ATTRS))
    add(recurrent(f"{k}_clip", kind, clip=0.7, f32=REF_RNN_ATTRS))
add(recurrent("lstm_peepholes", "LSTM", peepholes=True))
add(recurrent("lstm_peepholes_bidirectional_states", "LSTM", peepholes=True, states=True,
              direction="bidirectional"))
add(recurrent("lstm_input_forget", "LSTM", input_forget=1, f32=REF_RNN_ATTRS))
add(recurrent("lstm_activations", "LSTM", activations=["HardSigmoid", "LeakyRelu", "Affine"],
              activation_alpha=[0.3, 0.2, 0.8], activation_beta=[0.4, 0.1], f32=REF_RNN_ATTRS))
add(recurrent("lstm_activations_bidirectional", "LSTM", direction="bidirectional",
              activations=["Sigmoid", "ScaledTanh", "Softsign"] * 2,
              activation_alpha=[0.9, 1.1], activation_beta=[1.2, 0.7], f32=REF_RNN_ATTRS))
add(recurrent("gru_linear_before_reset", "GRU", linear_before_reset=1))
add(recurrent("gru_linear_before_reset_bidirectional_states", "GRU", linear_before_reset=1,
              direction="bidirectional", states=True))
add(recurrent("gru_activations", "GRU", activations=["HardSigmoid", "Elu"],
              activation_alpha=[0.3, 0.6], activation_beta=[0.4], f32=REF_RNN_ATTRS))
add(recurrent("rnn_relu", "RNN", activations=["Relu"], f32=REF_RNN_ATTRS))
add(recurrent("rnn_activations_bidirectional", "RNN", direction="bidirectional",
              activations=["Softplus", "ThresholdedRelu"], activation_alpha=[0.05],
              f32=REF_RNN_ATTRS))


# ---- control flow: a data-dependent If (constant Ifs, Loops and Scans are inlined or unrolled
# before differentiation, tests/test_control_flow.py). The branches read x and a weight from
# the outer scope; the sign of sum(x) picks the branch, so each sampler fixes which one runs.


def _if_case(cid: str, draw: Draw, nested: bool = False) -> RuleCase:
    d = helper.make_tensor_value_info
    then_nodes = [N("MatMul", ["x", "wt"], ["t0"]), N("Tanh", ["t0"], ["t1"]),
                  N("Mul", ["t1", "b"], ["t_out"])]
    if nested:  # the then-branch holds another data-dependent If on its own value's sign
        inner_then = helper.make_graph([N("Sin", ["t_out"], ["i_out"])], "inner_then", [],
                                       [d("i_out", D, None)])
        inner_else = helper.make_graph([N("Mul", ["t_out", "x0"], ["e_out"])], "inner_else",
                                       [], [d("e_out", D, None)])
        then_nodes += [N("ReduceSum", ["t_out"], ["t_sum"], keepdims=0),
                       N("Greater", ["t_sum", "zero"], ["t_pos"]),
                       N("If", ["t_pos"], ["t_fin"], then_branch=inner_then,
                         else_branch=inner_else)]
    then = helper.make_graph(then_nodes, "then", [], [d("t_fin" if nested else "t_out", D, None)])
    # The else-branch reads x but not b: b's gradient is zero when it runs.
    other = helper.make_graph([N("Exp", ["x"], ["e0"]), N("MatMul", ["e0", "wt"], ["e_fin"])],
                              "else", [], [d("e_fin", D, None)])
    nodes = [N("ReduceSum", ["x"], ["s"], keepdims=0), N("Greater", ["s", "zero"], ["pos"]),
             N("Slice", ["x", "i0", "i1", "i1"], ["x0"]),
             N("If", ["pos"], ["y"], then_branch=then, else_branch=other)]
    return case(cid, "If", nodes, {"x": (2, 3), "b": (2, 4)}, draw={"x": draw, "b": normal},
                inits={"wt": w(3, 4), "zero": np.array(0.0), "i0": np.array([0]),
                       "i1": np.array([1])})


def negative(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return -positive(rng, shape)


add(_if_case("if_data_then", positive))
add(_if_case("if_data_else", negative))
add(_if_case("if_data_nested_then", positive, nested=True))
# An LSTM inside a data-dependent branch (its rule unrolls inside the backward If's branch).
_lstm_then = helper.make_graph(
    [N("LSTM", ["x", "lw", "lr"], ["", "yh"], hidden_size=3),
     N("ReduceSum", ["yh"], ["t_out"], keepdims=0)], "then", [],
    [helper.make_tensor_value_info("t_out", D, None)])
_tanh_else = helper.make_graph(
    [N("Tanh", ["x"], ["e0"]), N("ReduceSum", ["e0"], ["e_out"], keepdims=0)], "else", [],
    [helper.make_tensor_value_info("e_out", D, None)])
add(case("if_data_lstm_branch", "If",
         [N("ReduceSum", ["x"], ["s"], keepdims=0), N("Greater", ["s", "zero"], ["pos"]),
          N("If", ["pos"], ["y"], then_branch=_lstm_then, else_branch=_tanh_else)],
         {"x": (3, 2, 2)}, draw=positive,
         inits={"lw": w(1, 12, 2), "lr": w(1, 12, 3), "zero": np.array(0.0)}))

# ---- quantized models (vjp_rules/quant.py): the straight-through rule (STE)
# A quantized graph is a step function (derivative 0 almost everywhere), so the STE is a
# convention, not its derivative: these cases compare the VJP of the float32 quantized graph
# (on onnxruntime: the reference evaluator has no DequantizeLinear-18) with central
# differences of `reference`, its dequantized float equivalent in float64 (the
# same graph with the rounding removed: QuantizeLinear + DequantizeLinear become a Clip to the
# representable range, integer ops their float ops on the dequantized weights). Inputs lie
# on the quantization grid, so rounding loses nothing and the two gradients agree exactly;
# saturated entries lie at least one step outside the range.
U8, I8, I16 = TensorProto.UINT8, TensorProto.INT8, TensorProto.INT16


def ste_case(cid: str, op_type: str, nodes: Sequence[onnx.NodeProto],
             equiv: Sequence[onnx.NodeProto], inputs: dict[str, tuple[int, ...]], *,
             draw: Draw | dict[str, Draw], inits: dict[str, Any] | None = None,
             equiv_inits: dict[str, Any] | None = None, opset: int = 18) -> RuleCase:
    q = case(cid, op_type, nodes, inputs, draw=draw, inits=inits, opset=opset, dtype=F,
             tol=1e-5, backend="onnxruntime")
    ref = case(cid + "_float", op_type, equiv, inputs, inits=equiv_inits, dtype=D)
    return dataclasses.replace(q, reference=ref.model)


def off_bounds(k: np.ndarray, kmin: Any, kmax: Any) -> np.ndarray:
    """Move k = kmin (kmax) one step out: the float equivalent's Clip has a kink there."""
    return np.where(k == kmin, k - 1, np.where(k == kmax, k + 1, k))


def grid(step: float, lo: int, hi: int, kmin: int = -(2**40), kmax: int = 2**40) -> Draw:
    """Multiples k step of the quantization step, lo <= k <= hi (exact in float32), where
    [kmin, kmax] is the representable range in steps."""

    def draw(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return step * off_bounds(rng.integers(lo, hi + 1, shape), kmin, kmax).astype(np.float64)

    return draw


def grid_axis(steps: Sequence[float], lo: int, hi: int, kmin: np.ndarray,
              kmax: np.ndarray) -> Draw:
    """`grid` per channel (axis 1 of a rank-3 input)."""

    def draw(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        k = off_bounds(rng.integers(lo, hi + 1, shape), kmin.reshape(1, -1, 1),
                       kmax.reshape(1, -1, 1))
        return k.astype(np.float64) * np.asarray(steps).reshape(1, -1, 1)

    return draw


def qdq(x: str, y: str, s: str, zp: str | None, **attrs: Any) -> list[onnx.NodeProto]:
    qin = [x, s] + ([zp] if zp else [])
    din = [y + "_q", s] + ([zp] if zp else [])
    return [N("QuantizeLinear", qin, [y + "_q"], **attrs),
            N("DequantizeLinear", din, [y], **{k: v for k, v in attrs.items() if k == "axis"})]


def clip(x: str, y: str) -> list[onnx.NodeProto]:
    return [N("Max", [x, y + "_lo"], [y + "_m"]), N("Min", [y + "_m", y + "_hi"], [y])]


# Q then DQ, per tensor, int8, opset 13 (converted): range [(-128 - 3) s, (127 - 3) s].
S = 2.0 ** -4
add(ste_case("qdq_int8_per_tensor_opset13", "QuantizeLinear",
             qdq("x", "y", "s", "zp"), clip("x", "y"), {"x": (2, 3, 4)},
             draw=grid(S, -160, 160, -131, 124), opset=13,
             inits={"s": np.array(S, np.float32), "zp": np.array(3, np.int8)},
             equiv_inits={"y_lo": np.array(-131 * S), "y_hi": np.array(124 * S)}))
# Per axis, uint8, and a DequantizeLinear with other parameters (catches a scale used the
# wrong way round in both rules): y = (clip(x) / s1 + z1 - z2) s2.
S1, S2 = np.array([2.0 ** -4, 2.0 ** -3, 2.0 ** -5]), np.array([0.05, 0.02, 0.1])
Z1, Z2 = np.array([120, 128, 100], np.uint8), np.array([128, 128, 128], np.uint8)
add(ste_case("qdq_uint8_per_axis_rescaled", "DequantizeLinear",
             [N("QuantizeLinear", ["x", "s1", "z1"], ["q"], axis=1),
              N("DequantizeLinear", ["q", "s2", "z2"], ["y"], axis=1)],
             [*clip("x", "c"), N("Mul", ["c", "k"], ["ck"]), N("Add", ["ck", "b"], ["y"])],
             {"x": (2, 3, 4)}, draw=grid_axis(list(S1), -150, 160, -Z1.astype(int), 255 - Z1.astype(int)),
             opset=13,
             inits={"s1": S1.astype(np.float32), "z1": Z1, "s2": S2.astype(np.float32),
                    "z2": Z2},
             equiv_inits={"c_lo": (-Z1.astype(float) * S1).reshape(1, 3, 1),
                          "c_hi": ((255 - Z1.astype(float)) * S1).reshape(1, 3, 1),
                          "k": (S2 / S1).reshape(1, 3, 1),
                          "b": ((Z1.astype(float) - Z2) * S2).reshape(1, 3, 1)}))
# Opset 19, no zero point (uint8, zp 0): everything negative saturates to 0.
add(ste_case("qdq_uint8_no_zero_point_opset19", "QuantizeLinear", qdq("x", "y", "s", None),
             clip("x", "y"), {"x": (3, 5)}, draw=grid(S, -60, 300, 0, 255), opset=19,
             inits={"s": np.array(S, np.float32)},
             equiv_inits={"y_lo": np.array(0.0), "y_hi": np.array(255 * S)}))
# Opset 21: int16 with a zero point, and output_dtype int8 without one.
add(ste_case("qdq_int16_opset21", "QuantizeLinear", qdq("x", "y", "s", "zp"), clip("x", "y"),
             {"x": (3, 5)}, draw=grid(2.0 ** -10, -40000, 40000, -32668, 32867), opset=21,
             inits={"s": np.array(2.0 ** -10, np.float32), "zp": np.array(-100, np.int16)},
             equiv_inits={"y_lo": np.array((-32768 + 100) * 2.0 ** -10),
                          "y_hi": np.array((32767 + 100) * 2.0 ** -10)}))
add(ste_case("qdq_output_dtype_int8_opset21", "QuantizeLinear",
             [N("QuantizeLinear", ["x", "s"], ["q"], output_dtype=I8),
              N("DequantizeLinear", ["q", "s"], ["y"])], clip("x", "y"), {"x": (3, 5)},
             draw=grid(S, -200, 200, -128, 127), opset=21, inits={"s": np.array(S, np.float32)},
             equiv_inits={"y_lo": np.array(-128 * S), "y_hi": np.array(127 * S)}))
# DynamicQuantizeLinear: its range covers x, so DQ(DQL(x)) is the identity's gradient.
add(ste_case("dynamic_quantize_dequantize", "DynamicQuantizeLinear",
             [N("DynamicQuantizeLinear", ["x"], ["q", "s", "zp"]),
              N("DequantizeLinear", ["q", "s", "zp"], ["y"])],
             [N("Identity", ["x"], ["y"])], {"x": (3, 4)}, draw=normal))
# Dynamic quantization of a MatMul (onnxruntime.quantization.quantize_dynamic's pattern):
# DQL -> MatMulInteger (per-column weight zero points) -> Cast -> Mul by both scales.
WQ = W_RNG.integers(-100, 100, (4, 5)).astype(np.int8)
WZ, WS = np.array([0, 3, -2, 1, 0], np.int8), 0.02
add(ste_case("matmul_integer_dynamic", "MatMulInteger",
             [N("DynamicQuantizeLinear", ["x"], ["q", "s", "zp"]),
              N("MatMulInteger", ["q", "wq", "zp", "wz"], ["i"]),
              N("Cast", ["i"], ["f"], to=F), N("Mul", ["s", "ws"], ["sw"]),
              N("Mul", ["f", "sw"], ["y"])],
             [N("MatMul", ["x", "w"], ["y"])], {"x": (3, 4)}, draw=normal,
             inits={"wq": WQ, "wz": WZ, "ws": np.array(WS, np.float32)},
             equiv_inits={"w": (WQ.astype(float) - WZ) * np.float32(WS)}))
CQ = W_RNG.integers(-60, 60, (3, 2, 3, 3)).astype(np.int8)
add(ste_case("conv_integer_dynamic", "ConvInteger",
             [N("DynamicQuantizeLinear", ["x"], ["q", "s", "zp"]),
              N("ConvInteger", ["q", "wq", "zp"], ["i"], pads=[1, 0, 1, 2], strides=[2, 1]),
              N("Cast", ["i"], ["f"], to=F), N("Mul", ["s", "ws"], ["sw"]),
              N("Mul", ["f", "sw"], ["y"])],
             [N("Conv", ["x", "w"], ["y"], pads=[1, 0, 1, 2], strides=[2, 1])],
             {"x": (1, 2, 6, 5)}, draw=normal,
             inits={"wq": CQ, "ws": np.array(0.01, np.float32)},
             equiv_inits={"w": CQ.astype(float) * np.float32(0.01)}))
# QLinearConv: uint8 activations, per-channel int8 weights, int32 bias. The weights are even
# and the bias odd, so conv(x, W) + B is an odd multiple of sx sw = sy: y never rounds and
# never lands on its bound 0, where the operator form's "at a bound = saturated" rule and
# the float Clip would disagree. Negative outputs saturate (a fused Relu's behaviour).
SX, SWC, SYC = 2.0 ** -3, np.array([2.0 ** -3, 2.0 ** -4, 2.0 ** -3]), 2.0 ** -6
QW = 2 * W_RNG.integers(-4, 5, (3, 2, 3, 3)).astype(np.int8)
QB = 2 * W_RNG.integers(-20, 20, 3).astype(np.int32) + 1
for cid, zy, attrs in [("qlinear_conv_relu_like", 0, {"pads": [1, 1, 1, 1]}),
                       ("qlinear_conv_strided", 128, {"strides": [2, 2], "pads": [0, 1, 1, 0]})]:
    sy = SYC * 2 if zy else SYC
    wf = QW.astype(float) * SWC.reshape(3, 1, 1, 1)
    hi = (255 - zy) * sy
    add(ste_case(cid, "QLinearConv",
                 [N("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
                  N("QLinearConv", ["xq", "sx", "zx", "w", "sw", "zw", "sy", "zy", "b"], ["yq"],
                    **attrs),
                  N("DequantizeLinear", ["yq", "sy", "zy"], ["y"])],
                 [*clip("x", "xc"), N("Conv", ["xc", "wf", "bf"], ["c"], **attrs),
                  *clip("c", "y")],
                 {"x": (1, 2, 6, 5)}, draw=grid(SX, -12, 12),
                 inits={"sx": np.array(SX, np.float32), "zx": np.array(128, np.uint8), "w": QW,
                        "sw": SWC.astype(np.float32), "zw": np.zeros(3, np.int8),
                        "sy": np.array(sy, np.float32), "zy": np.array(zy, np.uint8), "b": QB},
                 equiv_inits={"wf": wf, "bf": QB * SX * SWC, "xc_lo": np.array(-128 * SX),
                              "xc_hi": np.array(127 * SX), "y_lo": np.array(-zy * sy),
                              "y_hi": np.array(hi)}))
# QLinearMatMul with both operands from the input (attention-style), wide output range.
SA, SB, SYM = 2.0 ** -4, 2.0 ** -3, 2.0 ** -2
add(ste_case("qlinear_matmul_both_dynamic", "QLinearMatMul",
             [N("QuantizeLinear", ["a", "sa", "za"], ["aq"]),
              N("QuantizeLinear", ["b", "sb", "zb"], ["bq"]),
              N("QLinearMatMul", ["aq", "sa", "za", "bq", "sb", "zb", "sy", "zy"], ["yq"]),
              N("DequantizeLinear", ["yq", "sy", "zy"], ["y"])],
             [*clip("a", "ac"), *clip("b", "bc"), N("MatMul", ["ac", "bc"], ["y"])],
             {"a": (3, 4), "b": (4, 5)}, draw={"a": grid(SA, -150, 150, -128, 127), "b": grid(SB, -20, 20)},
             inits={"sa": np.array(SA, np.float32), "za": np.array(128, np.uint8),
                    "sb": np.array(SB, np.float32), "zb": np.array(0, np.int8),
                    "sy": np.array(SYM, np.float32), "zy": np.array(128, np.uint8)},
             equiv_inits={"ac_lo": np.array(-128 * SA), "ac_hi": np.array(127 * SA),
                          "bc_lo": np.array(-128 * SB), "bc_hi": np.array(127 * SB)}))


# ---- onnxruntime's fused ops (vjp_rules/contrib.py): on onnxruntime, which runs them
# (float64 where its kernel exists, else float32). Keys name the domain: com.microsoft::Op.
MSD = "com.microsoft"


def ms_case(cid: str, op_type: str, nodes: Sequence[onnx.NodeProto],
            inputs: dict[str, tuple[int, ...]], *, f32: str = "", **kw: Any) -> RuleCase:
    c = case(cid, op_type, nodes, inputs, backend="onnxruntime", f32=f32, **kw)
    c.model.opset_import.append(helper.make_opsetid(MSD, 1))
    if not f32 and not oracle.unrunnable(c.model):
        missing = oracle.ort_float64_missing(c.model)  # an older onnxruntime: float32 instead
        if missing:
            return ms_case(cid, op_type, nodes, inputs, f32=missing, **kw)
    return c


def msn(op_type: str, ins: Sequence[str], outs: Sequence[str], **attrs: Any) -> onnx.NodeProto:
    return N(op_type, list(ins), list(outs), domain=MSD, **attrs)


ORT_F32 = "onnxruntime's CPU kernel is float32 only"
for cid, act in [("fused_conv_tanh", "Tanh"), ("fused_conv_sigmoid", "Sigmoid")]:
    add(ms_case(cid, MSD + "::FusedConv",
                [msn("FusedConv", ["x", "W", "b"], ["y"], activation=act, pads=[1, 0, 1, 1],
                     strides=[2, 1])],
                {"x": X4, "b": (3,)}, inits={"W": w(3, 4, 3, 3)}, f32=ORT_F32))
# Piecewise activations behind a depthwise 1x1 identity conv, so the samples can keep the
# pre-activation away from the kinks (float32 differences across a kink are meaningless).
for cid, act, params, kinks in [
    ("fused_conv_relu", "Relu", [], (0.0,)),
    ("fused_conv_leaky_relu", "LeakyRelu", [0.1], (0.0,)),
    ("fused_conv_clip", "Clip", [0.0, 0.6], (0.0, 0.6)),
    ("fused_conv_hard_sigmoid", "HardSigmoid", [0.3, 0.4], (-4 / 3, 2.0)),
]:
    add(ms_case(cid, MSD + "::FusedConv",
                [msn("FusedConv", ["x", "W", "b"], ["y"], activation=act, group=4,
                     **({"activation_params": params} if params else {}))],
                {"x": X4}, inits={"W": np.ones((4, 1, 1, 1)), "b": np.zeros(4)},
                draw=away(*kinks, scale=2.0), f32=ORT_F32, piecewise_linear=True))
add(ms_case("fused_conv_sum_input", MSD + "::FusedConv",
            [msn("FusedConv", ["x", "W", "", "z"], ["y"], activation="Relu", group=2)],
            {"x": X4, "z": (2, 4, 5, 4)}, inits={"W": w(4, 2, 3, 3)}, f32=ORT_F32))
for cid, attrs, sa, sb, sc in [
    ("fused_gemm_relu_transB", {"activation": "Relu", "transB": 1, "alpha": 0.7}, (3, 4), (5, 4),
     (5,)),
    ("fused_gemm_leaky_transA", {"activation": "LeakyRelu", "activation_alpha": 0.2,
                                 "transA": 1, "beta": 1.5}, (4, 3), (4, 5), (3, 5)),
]:
    add(ms_case(cid, MSD + "::FusedGemm", [msn("FusedGemm", ["a", "b", "c"], ["y"], **attrs)],
                {"a": sa, "b": sb, "c": sc}, f32=ORT_F32))
for cid, attrs, sa, sb in [
    ("fused_matmul_alpha", {"alpha": 0.5}, (2, 3, 4), (4, 5)),
    ("fused_matmul_transA", {"transA": 1, "alpha": 2.0}, (2, 4, 3), (2, 4, 5)),
    ("fused_matmul_transB", {"transB": 1}, (3, 4), (2, 5, 4)),
]:
    add(ms_case(cid, MSD + "::FusedMatMul", [msn("FusedMatMul", ["a", "b"], ["y"], **attrs)],
                {"a": sa, "b": sb}))
add(ms_case("fused_matmul_const_b", MSD + "::FusedMatMul",
            [msn("FusedMatMul", ["a", "b"], ["y"], transB=1)], {"a": (2, 3, 4)},
            inits={"b": w(5, 4)}))
add(ms_case("ms_gelu", MSD + "::Gelu", [msn("Gelu", ["x"], ["y"])], {"x": R3}, f32=ORT_F32))
add(ms_case("bias_gelu", MSD + "::BiasGelu", [msn("BiasGelu", ["x", "b"], ["y"])],
            {"x": R3, "b": (4,)}, f32=ORT_F32))
add(ms_case("fast_gelu_bias", MSD + "::FastGelu", [msn("FastGelu", ["x", "b"], ["y"])],
            {"x": R3, "b": (4,)}, f32=ORT_F32))
add(ms_case("fast_gelu", MSD + "::FastGelu", [msn("FastGelu", ["x"], ["y"])], {"x": R3},
            f32=ORT_F32))
add(ms_case("quick_gelu", MSD + "::QuickGelu", [msn("QuickGelu", ["x"], ["y"], alpha=1.5)],
            {"x": R3}))
add(ms_case("skip_layer_norm", MSD + "::SkipLayerNormalization",
            [msn("SkipLayerNormalization", ["x", "s", "g", "bt", "bi"], ["y", "", "", "sum"],
                 epsilon=1e-3)],
            {"x": R3, "s": R3}, inits={"g": w(4), "bt": w(4), "bi": w(4)}, outputs=["y", "sum"],
            f32=ORT_F32))
add(ms_case("skip_layer_norm_broadcast_skip", MSD + "::SkipLayerNormalization",
            [msn("SkipLayerNormalization", ["x", "s", "g"], ["y"], epsilon=1e-3)],
            {"x": R3, "s": (3, 4)}, inits={"g": w(4)}, f32=ORT_F32, tol=5e-3))
add(ms_case("skip_simplified_layer_norm", MSD + "::SkipSimplifiedLayerNormalization",
            [msn("SkipSimplifiedLayerNormalization", ["x", "s", "g", "bi"], ["y"], epsilon=1e-3)],
            {"x": R3, "s": R3, "bi": (4,)}, inits={"g": w(4)}, f32=ORT_F32))

# ---- ONNX-ML (ai.onnx.ml; rules keyed "ai.onnx.ml::OpType", see vjp_rules/ml.py)
ML = "ai.onnx.ml::"
ORT_ML = "onnxruntime's semantics, which the reference evaluator does not share"


def ml_case(id: str, op_type: str, attrs: dict[str, Any], inputs: dict[str, tuple[int, ...]],
            *, label: bool = False, f32: str = "", draw: Draw | dict[str, Draw] = normal,
            inits: dict[str, Any] | None = None, tol: float = 1e-6) -> RuleCase:
    """One ai.onnx.ml node; classifiers get a label output that the graph does not return."""
    ins = list(inputs) + list(inits or {})
    outs = ["label", "y"] if label else ["y"]
    node = N(op_type, ins, outs, domain="ai.onnx.ml", **attrs)
    c = case(id, ML + op_type, [node], inputs, f32=f32, draw=draw, inits=inits, tol=tol)
    c.model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    if op_type not in ("ArrayFeatureExtractor", "Imputer"):  # the schema's output is float
        c.model.graph.output[0].type.tensor_type.elem_type = F  # (the reference keeps float64)
    return c


_mlr = np.random.default_rng(7)
_W34 = (_mlr.standard_normal(12) * 0.5).tolist()
for post in ("NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"):
    add(ml_case(f"ml_linear_classifier_{post.lower()}", "LinearClassifier",
                {"coefficients": _W34, "intercepts": [0.1, -0.2, 0.3],
                 "classlabels_ints": [0, 1, 2], "post_transform": post},
                {"x": (3, 4)}, label=True))
# PROBIT needs raw scores in (0, 1): small weights around an intercept of 0.5.
add(ml_case("ml_linear_classifier_probit", "LinearClassifier",
            {"coefficients": [v * 0.1 for v in _W34], "intercepts": [0.5, 0.4, 0.6],
             "classlabels_ints": [0, 1, 2], "post_transform": "PROBIT"},
            {"x": (3, 4)}, label=True, tol=1e-5))
for post in ("NONE", "LOGISTIC"):  # one row, two labels: scores [-s, s] before the transform
    add(ml_case(f"ml_linear_classifier_binary_{post.lower()}", "LinearClassifier",
                {"coefficients": _W34[:4], "intercepts": [0.2], "classlabels_ints": [0, 1],
                 "post_transform": post}, {"x": (3, 4)}, label=True,
                f32="the reference writes the binary scores in float32"))
add(ml_case("ml_linear_classifier_first_rows", "LinearClassifier",  # logreg_iris's form
            {"coefficients": _W34, "intercepts": [0.1, -0.2, 0.3],
             "classlabels_ints": [0, 1, 2], "post_transform": "LOGISTIC"},
            {"x": (3, 2)}, label=True, f32=ORT_ML + " (first E x F coefficients)"))
add(ml_case("ml_linear_regressor", "LinearRegressor",
            {"coefficients": _W34[:8], "intercepts": [0.5, -1.0], "targets": 2}, {"x": (3, 4)}))
for norm in ("L1", "L2"):
    add(ml_case(f"ml_normalizer_{norm.lower()}", "Normalizer", {"norm": norm}, {"x": (3, 5)},
                draw=away(0.0, margin=0.1)))
add(ml_case("ml_normalizer_max", "Normalizer", {"norm": "MAX"}, {"x": (3, 5)},
            draw=distinct, f32=ORT_ML + " (x / max x; the reference divides by max |x|)"))
add(ml_case("ml_scaler", "Scaler", {"offset": [0.5, -1.0, 2.0], "scale": [2.0, 0.5, -3.0]},
            {"x": (4, 3)}))
add(ml_case("ml_scaler_scalar", "Scaler", {"offset": [0.5], "scale": [1.5]}, {"x": (4, 3)}))
add(ml_case("ml_array_feature_extractor", "ArrayFeatureExtractor", {}, {"x": (3, 5)},
            inits={"idx": np.array([4, 0, 4, 2], np.int64)}))
add(ml_case("ml_imputer_nan", "Imputer",
            {"imputed_value_floats": [1.0, 2.0, 3.0], "replaced_value_float": float("nan")},
            {"x": (4, 3)}))
add(ml_case("ml_imputer_value", "Imputer",
            {"imputed_value_floats": [9.0], "replaced_value_float": 0.0}, {"x": (4, 3)}))

# SVMs: 3 classes, 2 + 3 + 2 support vectors of 4 features; one-vs-one decisions.
_SV = (_mlr.standard_normal(7 * 4) * 0.7).tolist()
_SVC_COEF = (_mlr.standard_normal(2 * 7)).tolist()
for kernel, params in [("LINEAR", [0.0, 0.0, 0.0]), ("POLY", [0.3, 1.0, 3.0]),
                       ("RBF", [0.4, 0.0, 0.0]), ("SIGMOID", [0.2, 0.1, 0.0])]:
    svc = {"kernel_type": kernel, "kernel_params": params, "support_vectors": _SV,
           "vectors_per_class": [2, 3, 2], "coefficients": _SVC_COEF,
           "rho": [0.1, -0.2, 0.3], "classlabels_ints": [0, 1, 2]}
    add(ml_case(f"ml_svm_classifier_{kernel.lower()}", "SVMClassifier", svc, {"x": (3, 4)},
                label=True))
    add(ml_case(f"ml_svm_regressor_{kernel.lower()}", "SVMRegressor",
                {"kernel_type": kernel, "kernel_params": params, "support_vectors": _SV,
                 "n_supports": 7, "coefficients": _SVC_COEF[:7], "rho": [0.25]},
                {"x": (3, 4)}))
add(ml_case("ml_svm_classifier_rbf_softmax", "SVMClassifier",
            {"kernel_type": "RBF", "kernel_params": [0.4, 0.0, 0.0], "support_vectors": _SV,
             "vectors_per_class": [2, 3, 2], "coefficients": _SVC_COEF,
             "rho": [0.1, -0.2, 0.3], "classlabels_ints": [0, 1, 2],
             "post_transform": "SOFTMAX"}, {"x": (3, 4)}, label=True))
add(ml_case("ml_svm_classifier_binary_rbf", "SVMClassifier",  # scores [-s, s]
            {"kernel_type": "RBF", "kernel_params": [0.4, 0.0, 0.0], "support_vectors": _SV[:20],
             "vectors_per_class": [2, 3], "coefficients": _SVC_COEF[:5], "rho": [0.1],
             "classlabels_ints": [0, 1]}, {"x": (3, 4)}, label=True,
            f32=ORT_ML + " (checked on the runtime users deploy)"))
add(ml_case("ml_svm_classifier_linear_mode", "SVMClassifier",  # no support vectors
            {"kernel_type": "LINEAR", "kernel_params": [0.0, 0.0, 0.0], "coefficients": _W34,
             "rho": [0.2],
             "classlabels_ints": [0, 1, 2]}, {"x": (3, 4)}, label=True,
            f32=ORT_ML + " (checked on the runtime users deploy)"))
# A 1% error in these ML rules must fail (joins SHARPNESS below).
ML_SHARPNESS = ["ml_linear_classifier_softmax", "ml_linear_classifier_probit",
                "ml_linear_classifier_binary_logistic", "ml_normalizer_l1", "ml_normalizer_max",
                "ml_scaler", "ml_array_feature_extractor", "ml_svm_classifier_rbf",
                "ml_svm_classifier_poly", "ml_svm_regressor_sigmoid", "ml_linear_regressor"]
add(ml_case("ml_svm_regressor_linear_mode", "SVMRegressor",
            {"kernel_type": "LINEAR", "coefficients": _W34[:4], "rho": [0.25],
             "n_supports": 0}, {"x": (3, 4)}))


# ---- indexed reads and writes, products, p-norm pools (vjp_rules/indexing.py, powers.py;
# issue 17). Indices are constants with negative and repeated entries where the op allows
# them; both data and updates of a scatter are inputs, so both gradients are checked.
def i64(values: Any) -> np.ndarray:
    return np.array(values, dtype=np.int64)


add(case("gather_nd_pairs", "GatherND", [N("GatherND", ["x", "i"], ["y"])], {"x": (3, 4, 2)},
         inits={"i": i64([[0, 1], [2, 3], [1, -1], [0, 1]])}))
add(case("gather_nd_slices_repeated", "GatherND", [N("GatherND", ["x", "i"], ["y"])],
         {"x": (3, 4)}, inits={"i": i64([[[1], [1]], [[-3], [2]]])}))
add(case("gather_nd_batch_dims1", "GatherND", [N("GatherND", ["x", "i"], ["y"], batch_dims=1)],
         {"x": (2, 3, 4)}, inits={"i": i64([[[2], [0], [2]], [[1], [-1], [0]]])}))
add(case("gather_nd_batch_dims2_elements", "GatherND",
         [N("GatherND", ["x", "i"], ["y"], batch_dims=2)], {"x": (2, 3, 4)},
         inits={"i": i64([[[1], [3], [0]], [[2], [2], [-1]]])}))
add(case("scatter_nd_rows", "ScatterND", [N("ScatterND", ["x", "i", "u"], ["y"])],
         {"x": (4, 3), "u": (2, 3)}, inits={"i": i64([[1], [-1]])}))
add(case("scatter_nd_elements", "ScatterND", [N("ScatterND", ["x", "i", "u"], ["y"])],
         {"x": (2, 3, 4), "u": (3,)}, inits={"i": i64([[0, 1, 2], [1, 2, 3], [1, -1, 0]])}))
add(case("scatter_nd_add_repeated", "ScatterND",
         [N("ScatterND", ["x", "i", "u"], ["y"], reduction="add")],
         {"x": (4, 3), "u": (3, 3)}, inits={"i": i64([[1], [1], [-1]])}))
add(case("scatter_elements_axis1", "ScatterElements",
         [N("ScatterElements", ["x", "i", "u"], ["y"], axis=1)], {"x": (3, 4), "u": (3, 2)},
         inits={"i": i64([[0, 2], [1, -1], [3, 0]])}))
add(case("scatter_elements_add_axis0", "ScatterElements",
         [N("ScatterElements", ["x", "i", "u"], ["y"], axis=0, reduction="add")],
         {"x": (3, 4), "u": (2, 4)}, inits={"i": i64([[0, 2, 2, 1], [0, -1, 2, 1]])}))


def with_zeros(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Normal (2, 3, 4) values with one zero in group (0, :, 0) and two in (1, :, 1)."""
    x = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    x[0, 0, 0] = x[1, 0, 1] = x[1, 2, 1] = 0.0
    return x


add(case("reduce_prod_axis1", "ReduceProd", [N("ReduceProd", ["x", "ax"], ["y"])], {"x": R3},
         inits={"ax": i64([1])}))
add(case("reduce_prod_zeros", "ReduceProd", [N("ReduceProd", ["x", "ax"], ["y"], keepdims=0)],
         {"x": (2, 3, 4)}, draw=with_zeros, inits={"ax": i64([1])}))
add(case("reduce_prod_all_attr_opset13", "ReduceProd", [N("ReduceProd", ["x"], ["y"],
                                                          keepdims=0)], {"x": (2, 3)},
         opset=13))
for cid, attrs, dr in [
    ("lp_pool_p2", {"kernel_shape": [2, 2]}, normal),
    ("lp_pool_p3_strided_pads", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                 "p": 3}, normal),
    ("lp_pool_p1", {"kernel_shape": [2, 3], "p": 1}, away(0.0)),
    ("lp_pool_dilated_ceil", {"kernel_shape": [2, 2], "strides": [2, 2], "dilations": [2, 1],
                              "ceil_mode": 1}, normal),
]:
    add(case(cid, "LpPool", [N("LpPool", ["x"], ["y"], **attrs)], {"x": (1, 2, 5, 6)}, draw=dr))
# An empty piece computed from the input (RotaryEmbedding's body: the unrotated rest when the
# rotary dimension is the full head) gets an empty gradient, not a refusal.
add(case("concat_empty_piece_from_input", "Concat",
         [N("Slice", ["x", "s", "s", "one"], ["e"]), N("Concat", ["x", "e"], ["y"], axis=1)],
         {"x": (2, 3)}, inits={"s": i64([3]), "one": i64([1])}))
REF_NO_GLOBAL_LP = "the reference evaluator has no GlobalLpPool"
add(unary("global_lp_pool_p2", "GlobalLpPool", normal, shape=(2, 3, 3, 4), f32=REF_NO_GLOBAL_LP))
add(unary("global_lp_pool_p3", "GlobalLpPool", normal, shape=(2, 3, 3, 4), p=3,
          f32=REF_NO_GLOBAL_LP))


# ---- GridSample (issue 17; vjp_rules/sampling.py). The grids are drawn in pixel coordinates
# at least 0.17 away from every integer and half-integer (tap boundaries, nearest's rounding,
# the reflection borders -0.5 / 0 / d - 1 / d - 0.5), some outside the image, then normalized
# and rounded to multiples of 2^-8 (exact in float32: the reference evaluator denormalizes in
# float32). The gradient to X runs with the grid frozen, in float64 on the reference evaluator
# at opset 20 (it knows only opset 20's mode names); the reference computes cubic weights in
# float32 (a 1e-5 tolerance there), and clamps the coordinate before cubic's taps with border
# padding where onnxruntime and PyTorch clamp each tap (followed by the rule: those cases run
# on onnxruntime). With the grid an input its gradient is checked as well, in float64 on
# onnxruntime (float64 differences of the grid are meaningless on the reference's float32
# coordinates); opset 16's names bilinear / bicubic in float32 there.
REF_CUBIC_F32 = 1e-5
ORT_GS16_F32 = "onnxruntime has no float64 GridSample-16 kernel"


def gs_grid(rng: np.random.Generator, lead: tuple[int, ...], dims: Sequence[int],
            align: bool) -> np.ndarray:
    """A [*lead, len(dims)] grid (x = the last axis first) off every kink of GridSample."""
    comps = []
    for d in reversed(dims):
        u = rng.integers(-2, d + 2, lead) + rng.choice([0.25, 0.75], lead) + rng.uniform(
            -0.06, 0.06, lead)
        g = 2 * u / (d - 1) - 1 if align else (2 * u + 1) / d - 1
        comps.append(np.round(g * 256) / 256)
    return np.stack(comps, axis=-1)


def gs_draw(dims: Sequence[int], align: bool) -> Draw:
    def draw(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return gs_grid(rng, shape[:-1], dims, align)

    return draw


def gs_case(cid: str, xs: tuple[int, ...], out: tuple[int, ...], opset: int = 20,
            grid_input: bool = False, f32: str = "", **attrs: Any) -> RuleCase:
    dims, align = xs[2:], bool(attrs.get("align_corners", 0))
    gs = (xs[0], *out, len(dims))
    node = [N("GridSample", ["x", "grid"], ["y"], **attrs)]
    cubic = attrs.get("mode") in ("cubic", "bicubic")
    on_ort = grid_input or (cubic and attrs.get("padding_mode") == "border")
    kw: dict[str, Any] = {"backend": "onnxruntime"} if on_ort else {}
    if cubic and not on_ort:
        kw["tol"] = REF_CUBIC_F32
    if grid_input:
        return case(cid, "GridSample", node, {"x": xs, "grid": gs}, opset=opset,
                    draw={"x": normal, "grid": gs_draw(dims, align)}, f32=f32, **kw)
    return case(cid, "GridSample", node, {"x": xs}, opset=opset,
                inits={"grid": gs_grid(GS_RNG, gs[:-1], dims, align)}, **kw)


GS_RNG = _rng(17)
for mode, pad, align in [(m, p, a) for m in ("linear", "nearest", "cubic")
                         for p in ("zeros", "border", "reflection") for a in (0, 1)]:
    add(gs_case(f"grid_sample_{mode}_{pad}_ac{align}", (2, 2, 4, 5), (3, 4), mode=mode,
                padding_mode=pad, align_corners=align))
add(gs_case("grid_sample_default_attrs", (1, 3, 3, 4), (5, 2)))
add(gs_case("grid_sample_opset22_nearest_reflection", (2, 1, 3, 3), (2, 4), opset=22,
            mode="nearest", padding_mode="reflection"))
for mode, pad, align in [("linear", "zeros", 0), ("linear", "reflection", 1),
                         ("linear", "border", 0), ("nearest", "reflection", 0)]:
    add(gs_case(f"grid_sample_3d_{mode}_{pad}_ac{align}", (1, 2, 3, 4, 3), (2, 3, 2),
                mode=mode, padding_mode=pad, align_corners=align))
# both operands inputs: the grid's gradient as well (nearest's is zero: piecewise constant)
for mode, pad, align in [(m, p, a) for m in ("linear", "cubic", "nearest")
                         for p in ("zeros", "border", "reflection") for a in (0, 1)]:
    add(gs_case(f"grid_sample_wrt_grid_{mode}_{pad}_ac{align}", (2, 2, 4, 5), (3, 4),
                grid_input=True, mode=mode, padding_mode=pad, align_corners=align))
# opset 16's names, in float32 (onnxruntime 1.32 has no float64 GridSample-16 kernel)
for mode in ("bilinear", "bicubic"):
    add(gs_case(f"grid_sample_opset16_{mode}_f32", (1, 3, 4, 5), (5, 6), opset=16,
                grid_input=True, f32=ORT_GS16_F32, mode=mode, padding_mode="border"))
add(gs_case("grid_sample_wrt_grid_3d_linear_reflection", (1, 2, 3, 4, 3), (2, 3, 2),
            grid_input=True, mode="linear", padding_mode="reflection"))


# ---- ReverseSequence (issue 17): its own adjoint; sequence_lens an int64 initializer
add(case("reverse_sequence_time_major", "ReverseSequence",
         [N("ReverseSequence", ["x", "lens"], ["y"])], {"x": (4, 3, 2)},
         inits={"lens": np.array([4, 1, 3], np.int64)}))
add(case("reverse_sequence_batch_major", "ReverseSequence",
         [N("ReverseSequence", ["x", "lens"], ["y"], batch_axis=0, time_axis=1)],
         {"x": (3, 5, 2)}, inits={"lens": np.array([2, 5, 0], np.int64)}))


# ---- MaxUnpool (issue 17): the indices of a MaxPool (overlapping windows: duplicates, the
# last writer gets the gradient), and ones written by hand
add(case("max_unpool_from_max_pool", "MaxUnpool",
         [N("MaxPool", ["x0"], ["p", "i"], kernel_shape=[2, 2], strides=[2, 2]),
          N("MaxUnpool", ["x", "i"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
         {"x": (2, 3, 2, 3)}, inits={"x0": np.random.default_rng(5).normal(size=(2, 3, 4, 6))},
         opset=11))
add(case("max_unpool_duplicate_indices", "MaxUnpool",
         [N("MaxUnpool", ["x", "i"], ["y"], kernel_shape=[2], strides=[1])],
         {"x": (1, 1, 4)}, inits={"i": np.array([[[1, 1, 3, 2]]], np.int64)}, opset=11))


# ---- Col2Im (issue 17): its adjoint gathers (Im2Col); padding, strides and dilations
add(case("col2im_plain", "Col2Im", [N("Col2Im", ["x", "img", "blk"], ["y"])],
         {"x": (2, 6, 16)}, inits={"img": np.array([4, 5], np.int64),
                                   "blk": np.array([1, 2], np.int64)}))
add(case("col2im_pads_strides_dilations", "Col2Im",
         [N("Col2Im", ["x", "img", "blk"], ["y"], pads=[1, 0, 1, 2], strides=[2, 1],
            dilations=[1, 2])],
         {"x": (1, 8, 12)}, inits={"img": np.array([5, 4], np.int64),
                                   "blk": np.array([2, 2], np.int64)}))


# ---- h11-conf (issue 17): CumProd (vjp_rules/powers.py). Inputs with zeros, one and two in
# a slice along the axis: the rule divides by nothing, so the gradient is exact there.
def cumprod_zeros(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """(3, 4) values in +-[0.5, 1.5] with one zero in row 1 and two in row 2."""
    x = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    x[1, 1] = x[2, 0] = x[2, 2] = 0.0
    return x


for ex, rev in [(0, 0), (1, 0), (0, 1), (1, 1)]:
    add(case(f"cumprod_ex{ex}_rev{rev}", "CumProd",
             [N("CumProd", ["x", "ax"], ["y"], exclusive=ex, reverse=rev)], {"x": (3, 4)},
             draw=cumprod_zeros, inits={"ax": np.array(1, np.int64)}, opset=26))
add(case("cumprod_axis0_3d", "CumProd", [N("CumProd", ["x", "ax"], ["y"])], {"x": (4, 2, 3)},
         inits={"ax": np.array(-3, np.int64)}, opset=26))


# ---- h11-conf (issue 17): ScatterElements / ScatterND with reduction mul, max, min
# (vjp_rules/indexing.py). Repeated indices, so several updates fold into one position; mul's
# updates have zeros (alone at a position, or two at one), max / min's values are
# tie-free (data and updates on interleaved grids).
def upd_zeros(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values in +-[0.5, 1.5], the first entry and the last two zero."""
    x = (rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)).reshape(-1)
    x[0] = x[-1] = x[-2] = 0.0
    return x.reshape(shape)


def distinct_odd(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """`distinct` values shifted by half their step: never equal to a `distinct` value."""
    return distinct(rng, shape) + 0.05


SE_IDX = i64([[0, 2, 2, 1], [0, -1, 2, 1], [1, 2, 0, 1]])  # (3, 4) into x (3, 4) along axis 0
for red in ("mul", "max", "min"):
    draws: dict[str, Draw] = ({"x": positive, "u": upd_zeros} if red == "mul"
                              else {"x": distinct, "u": distinct_odd})
    add(case(f"scatter_elements_{red}_axis0", "ScatterElements",
             [N("ScatterElements", ["x", "i", "u"], ["y"], axis=0, reduction=red)],
             {"x": (3, 4), "u": (3, 4)}, draw=draws, inits={"i": SE_IDX}))
    # row 3 written twice (once as -1); for mul, (0, 1) gets two zeros, (1, 0) one
    add(case(f"scatter_nd_{red}_rows", "ScatterND",
             [N("ScatterND", ["x", "i", "u"], ["y"], reduction=red)],
             {"x": (4, 3), "u": (4, 3)}, draw=draws, inits={"i": i64([[1], [-1], [0], [3]])}))
    add(case(f"scatter_nd_{red}_elements", "ScatterND",
             [N("ScatterND", ["x", "i", "u"], ["y"], reduction=red)],
             {"x": (2, 3), "u": (4,)}, draw=draws,
             inits={"i": i64([[0, 1], [1, 2], [0, 1], [-1, 0]])}))
add(case("scatter_elements_mul_data_zeros", "ScatterElements",
         [N("ScatterElements", ["x", "i", "u"], ["y"], axis=1, reduction="mul")],
         {"x": (3, 4), "u": (3, 2)}, draw={"x": cumprod_zeros, "u": upd_zeros},
         inits={"i": i64([[0, 0], [1, -1], [3, 3]])}))


# ---- h11-conf (issue 17): Compress (vjp_rules/indexing.py), Det (linalg.py).
# Compress's conditions keep repeated runs and end short of the axis (the rest dropped).
add(case("compress_axis1_short_condition", "Compress",
         [N("Compress", ["x", "c"], ["y"], axis=1)], {"x": (3, 5)},
         inits={"c": np.array([True, False, True, True], bool)}, opset=11))
add(case("compress_flat", "Compress", [N("Compress", ["x", "c"], ["y"])], {"x": (2, 3)},
         inits={"c": np.array([False, True, True, False, False, True], bool)}, opset=11))
add(case("compress_negative_axis_none_kept", "Compress",
         [N("Compress", ["x", "c"], ["y"], axis=-1), N("Concat", ["y", "x"], ["z"], axis=-1)],
         {"x": (2, 2)}, outputs=("z",), inits={"c": np.array([False, False], bool)}, opset=11))

def rank_deficient(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """[..., n, n] matrices of rank n - 1 (det 0, no inverse; the cofactors are not 0)."""
    n = shape[-1]
    return rng.standard_normal((*shape[:-1], n - 1)) @ rng.standard_normal(
        (*shape[:-2], n - 1, n))


for cid, shape, dr in [("det_3x3", (3, 3), normal), ("det_batch_2x2", (2, 3, 2, 2), normal),
                       ("det_1x1", (4, 1, 1), normal), ("det_singular_4x4", (2, 4, 4),
                                                         rank_deficient)]:
    add(case(cid, "Det", [N("Det", ["x"], ["y"])], {"x": shape}, draw=dr, opset=11))


# ---- h11-conf (issue 17): DFT (vjp_rules/spectral.py), at DFT-17 (axis attribute) and DFT-20
# (axis input): real and complex signals, forward and inverse, one-sided, dft_length padding
# and truncating, and the one-sided inverse (a real output).
def dft(cid: str, xs: tuple[int, ...], opset: int = 20, axis: int | None = None,
        length: int | None = None, backend: Literal["reference", "onnxruntime"] = "reference",
        **attrs: Any) -> RuleCase:
    inits: dict[str, Any] = {}
    ins = ["x", ""]
    if length is not None:
        inits["len"], ins[1] = np.array(length, np.int64), "len"
    if opset >= 20 and axis is not None:
        inits["ax"] = np.array(axis, np.int64)
        ins.append("ax")
    elif axis is not None:
        attrs["axis"] = axis
    return case(cid, "DFT", [N("DFT", ins, ["y"], **attrs)], {"x": xs}, inits=inits,
                opset=opset, backend=backend)


add(dft("dft_real_default_axis", (2, 5, 1)))
add(dft("dft_complex_axis1_of_4d", (2, 6, 3, 2), axis=1))
add(dft("dft_inverse_complex_neg_axis", (3, 4, 2), axis=-2, inverse=1))
add(dft("dft_rfft_padded", (2, 3, 5, 1), axis=2, length=8, onesided=1))
add(dft("dft_truncated_opset19", (2, 7, 2), opset=19, axis=1, length=4))
add(dft("dft_irfft_opset19", (1, 4, 3, 2), opset=19, axis=1, inverse=1, onesided=1))


# ---- h11-conf (issue 17): Resize with tf_crop_and_resize (vjp_rules/resize.py): regions
# inside and partly outside the image (the extrapolated outputs are constants), given for
# every axis or for `axes` only, by sizes and by scales (dyadic where float32 weights must be
# exact: onnxruntime has no float64 Resize to read them off)
TF_CROP = {"coordinate_transformation_mode": "tf_crop_and_resize"}
for cid, ins, inits, attrs in [
    ("resize_tf_crop_linear_sizes", ["x", "roi", "", "sz"],
     {"roi": np.array([0, 0, 0.2, 0.1, 1, 1, 0.9, 0.7], np.float32),
      "sz": np.array([1, 2, 3, 5], np.int64)}, {"mode": "linear"}),
    ("resize_tf_crop_extrapolated_axes_3_2", ["x", "roi", "", "sz"],
     {"roi": np.array([0.25, -0.5, 1.25, 0.75], np.float32), "sz": np.array([5, 6], np.int64)},
     {"mode": "linear", "axes": [3, 2], "extrapolation_value": 10.0}),
    ("resize_tf_crop_nearest_scales", ["x", "roi", "sc"],
     {"roi": np.array([0, 0, 0.1, -0.2, 1, 1, 0.8, 1.3], np.float32),
      "sc": np.array([1, 1, 1.5, 2], np.float32)}, {"mode": "nearest"}),
    ("resize_tf_crop_cubic", ["x", "roi", "", "sz"],
     {"roi": np.array([0.2, 0.1, 0.9, 1.1], np.float32), "sz": np.array([6, 4], np.int64)},
     {"mode": "cubic", "axes": [2, 3]}),
]:
    add(case(cid, "Resize", [N("Resize", ins, ["y"], **TF_CROP, **attrs)], {"x": RX},
             inits=inits, opset=18))
# An axis of unchanged size: onnxruntime copies it, ignoring its roi (the reference evaluator
# crops it). The rule follows the runtime, so the case runs there.
add(case("resize_tf_crop_same_height_f32", "Resize",
         [N("Resize", ["x", "roi", "", "sz"], ["y"], mode="linear", axes=[2, 3], **TF_CROP)],
         {"x": RX}, inits={"roi": np.array([-0.4, 0.3, 0.8, 1.2], np.float32),
                           "sz": np.array([4, 5], np.int64)},
         f32="onnxruntime ignores the roi of an axis whose size does not change",
         piecewise_linear=True))


# ---- h11-conf (issue 17): Dropout in training mode (vjp_rules/nn.py), seeded so that the
# finite differences see the same mask: with the mask output, without it (the rule names
# one), ratio 0 (the identity), training_mode false. On the reference evaluator: it reseeds
# every run, where onnxruntime's seeded Dropout draws a new mask each run of a session.
BOOL_T = {"t": np.array(True)}
for cid, ins, outs, ratio in [("dropout_training_mask", ["x", "r", "t"], ["y", "m"], 0.3),
                              ("dropout_training_no_mask", ["x", "r", "t"], ["y"], 0.75),
                              ("dropout_training_zero_ratio", ["x", "r", "t"], ["y"], 0.0)]:
    add(case(cid, "Dropout", [N("Dropout", ins, outs, seed=3)], {"x": (4, 5)},
             inits={**BOOL_T, "r": np.array(ratio)}, opset=22))
add(case("dropout_training_false", "Dropout", [N("Dropout", ["x", "r", "t"], ["y"], seed=3)],
         {"x": (4, 5)}, inits={"r": np.array(0.5), "t": np.array(False)}, opset=22))


# ---- h11-conf (issue 17): TensorScatter (vjp_rules/indexing.py): cache and update both
# inputs; linear and circular writes (wrapping past the end), the default axis and axis 1.
# On onnxruntime too: the reference evaluator's GatherElements wraps an index past the end
# (an unwrapped circular position goes unnoticed there), onnxruntime's refuses it.
BOTH_BACKENDS: tuple[Literal["reference", "onnxruntime"], ...] = ("reference", "onnxruntime")
for cid, cs, us, wi, attrs in [
    ("tensor_scatter_linear", (2, 3, 5, 4), (2, 3, 2, 4), [1, 3], {}),
    ("tensor_scatter_circular_wraps", (2, 5, 3), (2, 3, 3), [4, 1],
     {"mode": "circular", "axis": 1}),
    ("tensor_scatter_no_indices", (3, 4, 2), (3, 2, 2), None, {}),
]:
    for backend in BOTH_BACKENDS:
        add(case(f"{cid}_{backend}", "TensorScatter",
                 [N("TensorScatter", ["c", "u", *(["w"] if wi else [])], ["y"], **attrs)],
                 {"c": cs, "u": us}, inits={"w": i64(wi)} if wi else {}, opset=24,
                 backend=backend))


# ---- h11-conf (issue 17): MaxPool with storage_order=1 and its Indices output (column-major
# numbering; the rule pools again for row-major indices) (vjp_rules/pooling.py)
add(case("maxpool_storage_order_1_indices", "MaxPool",
         [N("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], strides=[2, 1],
            storage_order=1)], {"x": (1, 2, 4, 5)}, draw=distinct))


# ---- h11-conf (issue 17): STFT (vjp_rules/spectral.py): overlapping frames, a window, a
# complex signal two-sided, and trailing samples that no frame reaches (a zero gradient).
# onesided is explicit here; its default is the test at the end of the file.
for cid, xs, step, window, length, attrs in [
    ("stft_frame_length_overlap", (2, 20, 1), 3, None, 8, {"onesided": 1}),
    ("stft_hann_window_tail", (1, 23, 1), 4, np.hanning(8), None, {"onesided": 1}),
    ("stft_complex_two_sided", (2, 12, 2), 2, np.linspace(0.5, 1.5, 6), 6, {"onesided": 0}),
    # torch's form, a [B, L] signal: on onnxruntime (the reference evaluator's STFT fails)
    ("stft_rank2_signal", (2, 14), 3, np.hanning(6), None, {"onesided": 1}),
]:
    inits = {"step": np.array(step, np.int64)}
    ins = ["x", "step", "", ""]
    if window is not None:
        inits["w"], ins[2] = window, "w"
    if length is not None:
        inits["len"], ins[3] = np.array(length, np.int64), "len"
    add(case(cid, "STFT", [N("STFT", ins, ["y"], **attrs)], {"x": xs}, inits=inits, opset=17,
             backend="onnxruntime" if len(xs) == 2 else "reference"))


# ---- h11-conf (issue 17): DeformConv (vjp_rules/deform.py): offsets, mask, bias and weights
# all inputs, so all their gradients are checked; offsets off the integers (the bilinear
# kinks), some taps outside the image; strides, pads, dilations, groups, offset groups
def off_grid(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Offsets in [-1.8, 1.8] at least 0.1 away from every integer."""
    whole = rng.integers(-2, 2, shape)
    return whole + rng.uniform(0.1, 0.9, shape)


def deform(cid: str, xs: tuple[int, ...], ws: tuple[int, ...], ys: tuple[int, int],
           og: int = 1, bias: bool = False, mask: bool = False, opset: int = 22,
           **attrs: Any) -> RuleCase:
    k = ws[2] * ws[3]
    ins = {"x": xs, "w": ws, "off": (xs[0], og * k * 2, *ys)}
    names = ["x", "w", "off", "", ""]
    draws: dict[str, Draw] = {"x": normal, "w": normal, "off": off_grid}
    if bias:
        ins["b"], names[3], draws["b"] = (ws[0],), "b", normal
    if mask:
        ins["m"], names[4], draws["m"] = (xs[0], og * k, *ys), "m", positive
    while names[-1] == "":
        names.pop()
    f32 = ORT_GS16_F32 if opset < 20 else ""  # the rule's GridSample is at the model's opset
    return case(cid, "DeformConv", [N("DeformConv", names, ["y"], offset_group=og, **attrs)],
                ins, draw=draws, opset=opset, backend="onnxruntime", f32=f32)


# onnx 1.23's reference DeformConv calls GridSample with a mode name it rejects: onnxruntime
add(deform("deform_conv_plain_opset19", (1, 2, 4, 5), (3, 2, 2, 2), (3, 4), opset=19))
add(deform("deform_conv_pads_strides_bias", (2, 2, 5, 4), (2, 2, 3, 3), (3, 2), bias=True,
           pads=[1, 1, 1, 1], strides=[2, 2]))
add(deform("deform_conv_groups_mask_dilation", (1, 4, 5, 5), (4, 2, 2, 2), (3, 4), og=2,
           mask=True, group=2, dilations=[2, 1]))


# ---- h11-conf (issue 17): BatchNormalization in training mode (vjp_rules/nn.py): the batch's
# statistics, and the running mean and variance outputs differentiated too
for cid, outs in [("batch_norm_training_all_outputs", ["y", "rm", "rv"]),
                  ("batch_norm_training_y_only", ["y"]),
                  ("batch_norm_training_running_var_only", ["rv"])]:
    add(case(cid, "BatchNormalization",
             [N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"],
                training_mode=1, momentum=0.8)],
             {"x": (3, 2, 2, 3)}, outputs=outs,
             inits={"s": w(2) + 1.0, "b": w(2), "m": w(2), "v": np.abs(w(2)) + 0.5},
             opset=15))


# ---- h11-conf (issue 17): Einsum with a repeated index (a diagonal; vjp_rules/linalg.py)
for cid, eq, shapes in [("einsum_batch_diagonal", "...ii->...i", [(2, 3, 3)]),
                        ("einsum_trace", "ii", [(4, 4)]),
                        ("einsum_diagonal_times_matrix", "iij,jk->ik", [(3, 3, 2), (2, 4)]),
                        ("einsum_triple_diagonal_operand_b", "ij,jjj->i", [(2, 3), (3, 3, 3)])]:
    names = ["a", "b"][:len(shapes)]
    add(case(cid, "Einsum", [N("Einsum", names, ["y"], equation=eq)],
             dict(zip(names, shapes, strict=True)), opset=12))


# ---- h18-loop (issue 12): Loop (vjp_rules/loop.py): a reverse Loop over the saved states. The
# trip count is fed at run time, so prepare cannot unroll it; the body reads x and W from the
# outer scope (tests/test_loop_vjp.py has the long, while, scan-output and nested cases).
_loop_body = helper.make_graph(
    [N("Identity", ["c_in"], ["c_out"]), N("MatMul", ["h_in", "lw"], ["hw"]),
     N("Add", ["hw", "x"], ["pre"]), N("Tanh", ["pre"], ["h_out"])], "step",
    [helper.make_tensor_value_info("i", TensorProto.INT64, []),
     helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
     helper.make_tensor_value_info("h_in", D, [2, 3])],
    [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
     helper.make_tensor_value_info("h_out", D, [2, 3])])
add(case("loop_runtime_trip_count", "Loop", [N("Loop", ["M", "", "h0"], ["y"], body=_loop_body)],
         {"h0": (2, 3), "x": (2, 3)}, inits={"lw": w(3, 3)}, int_feeds={"M": np.array(5)},
         backend="onnxruntime"))


# --------------------------------------------------------------------------- the tests


def _rule_of(c: RuleCase) -> str:
    return c.op_type


def _skip_unrunnable(c: RuleCase) -> None:
    """Skip a case that no installed runtime can run (an older onnx or onnxruntime)."""
    why = c.skip or oracle.unrunnable(c.model)
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_vjp_rule(c: RuleCase, rng: np.random.Generator) -> None:
    _skip_unrunnable(c)
    feeds = c.sample(rng)
    result = check_vjp(c.model, feeds, rng=rng, eps=c.eps, backend=c.backend,
                       reference=c.reference)
    assert np.isfinite(result.analytic)
    assert abs(result.numeric) > 1e-8, "degenerate case: the output does not move"
    assert result.error < c.tol, f"{c.id}: {result}"


def test_case_ids_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


def test_every_rule_has_a_case() -> None:
    """Every registered rule has a case, and every case names a registered rule."""
    covered = {_rule_of(c) for c in CASES}
    assert covered == set(VJP_RULES), (
        f"rules without a case: {sorted(set(VJP_RULES) - covered)}; "
        f"cases without a rule: {sorted(covered - set(VJP_RULES))}")


def test_cases_use_the_op_they_name() -> None:
    """The op a case claims to test is in its model (Upsample is converted to Resize)."""
    for c in CASES:
        ops = {rule_key(n) for n in c.model.graph.node} | {n.op_type for n in c.model.graph.node} | {
            f"{n.domain}::{n.op_type}" for n in c.model.graph.node if n.domain}
        assert c.op_type in ops or (c.op_type == "Resize" and "Upsample" in ops), c.id


# A 1% error in one rule's gradient must fail its cases: the table is sharp enough to catch
# a wrong rule, not just a missing one.
SHARPNESS = ["relu", "relu_f32", "clip_relu6_f32", "add_bcast", "matmul_bcast_batch", "conv_stride_asym_pads",
             "conv_dw_s2_asym_pads", "conv_dw_s2_f32", "maxpool_pads",
             "avgpool_ceil_pads_include", "softmax_opset11_axis1", "slice_step_neg1",
             "resize_linear_half_pixel", "einsum_operand_only_index",
             "qdq_int8_per_tensor_opset13", "qdq_int16_opset21", "fused_matmul_transA",
             "fused_conv_clip", "quick_gelu", *ML_SHARPNESS]


@pytest.mark.parametrize("cid", SHARPNESS)
def test_a_wrong_rule_fails(cid: str, rng: np.random.Generator,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    c = next(c for c in CASES if c.id == cid)
    _skip_unrunnable(c)
    rule = VJP_RULES[c.op_type]

    def off_by_one_percent(op: Any, node: onnx.NodeProto, gys: Any,
                           needs: Any) -> list[str | None]:
        gx = list(rule(op, node, gys, needs))
        gx[0] = op.Mul(gx[0], op.const(1.01, like=node.input[0]))
        return gx

    monkeypatch.setitem(VJP_RULES, c.op_type, off_by_one_percent)
    result = check_vjp(c.model, c.sample(rng), rng=rng, eps=c.eps, backend=c.backend,
                       reference=c.reference)
    assert result.error > c.tol


def test_stft_with_default_onesided_gets_the_one_sided_gradient() -> None:
    """onnx's shape inference counts two-sided bins where STFT's onesided is left at its
    default 1; graph.prepare spells the default out, so the rule sees onnxruntime's shape."""
    c = case("stft_default_onesided", "STFT", [N("STFT", ["x", "step", "", "len"], ["y"])],
             {"x": (1, 12, 1)}, inits={"step": np.array(2, np.int64),
                                       "len": np.array(4, np.int64)}, opset=17,
             backend="onnxruntime")
    rng = np.random.default_rng(0)
    result = check_vjp(c.model, c.sample(rng), rng=rng, eps=c.eps, backend=c.backend,
                       reference=c.reference)
    assert result.error < c.tol, result
    assert [a.name for a in c.model.graph.node[0].attribute] == []  # the caller's model


def test_training_dropout_in_a_data_dependent_if_is_refused() -> None:
    """The If rule recomputes its branch in the backward pass: a second Dropout draw would
    not be the forward's mask, so the rule refuses (h11-conf)."""
    from neuromask_onnx.errors import UnsupportedOpError
    from neuromask_onnx.reverse import vjp

    vi = helper.make_tensor_value_info
    drop = N("Dropout", ["x", "r", "t"], ["d"], seed=1)
    then = helper.make_graph([drop], "then", [], [vi("d", D, [3, 4])])
    other = helper.make_graph([N("Neg", ["x"], ["e"])], "else", [], [vi("e", D, [3, 4])])
    nodes = [N("ReduceSum", ["x"], ["s"], keepdims=0), N("Greater", ["s", "z"], ["c"]),
             N("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    g = helper.make_graph(nodes, "if_dropout", [vi("x", D, [3, 4])], [vi("y", D, [3, 4])],
                          [numpy_helper.from_array(np.array(0.0), "z"),
                           numpy_helper.from_array(np.array(0.5), "r"),
                           numpy_helper.from_array(np.array(True), "t")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 22)])
    m.ir_version = 10
    with pytest.raises(UnsupportedOpError, match="inside a data-dependent If"):
        vjp(m, wrt=["x"], of=["y"])


@pytest.mark.parametrize(("cid", "module", "limit", "words"), [
    ("cumprod_axis0_3d", "powers", "CUMPROD_TABLE_MAX", "needs a table of"),
    ("det_3x3", "linalg", "DET_MAX_N", r"9 minors \(only n <= 2\)"),
    ("dft_real_default_axis", "spectral", "DFT_MATRIX_MAX", "transform shorter signals"),
])
def test_size_limits_refuse_in_one_line(cid: str, module: str, limit: str, words: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its size limit (here lowered) a rule refuses with the sizes, not a huge graph."""
    import importlib

    from neuromask_onnx.errors import UnsupportedOpError
    from neuromask_onnx.reverse import vjp

    monkeypatch.setattr(importlib.import_module(f"neuromask_onnx.vjp_rules.{module}"), limit, 2)
    c = next(c for c in CASES if c.id == cid)
    with pytest.raises(UnsupportedOpError, match=words):
        vjp(c.model)


def test_dynamic_quantize_scale_only_is_refused_with_its_reason() -> None:
    """Only y_scale used: the straight-through rule has nothing to pass (h11-conf)."""
    from neuromask_onnx.errors import UnsupportedOpError
    from neuromask_onnx.reverse import vjp

    c = case("dql_scale_only", "DynamicQuantizeLinear",
             [N("DynamicQuantizeLinear", ["x"], ["q", "s", "zp"])], {"x": (3, 4)},
             outputs=("s",), dtype=F, opset=13)
    with pytest.raises(UnsupportedOpError, match="passes no gradient through the scale"):
        vjp(c.model, wrt=["x"], of=["s"])


def test_float64_deform_conv_below_opset_20_is_refused() -> None:
    """Its gradient's GridSample-16 has no float64 kernel in onnxruntime (h11-conf)."""
    from neuromask_onnx.errors import UnsupportedOpError
    from neuromask_onnx.reverse import vjp

    c = case("deform_f64_opset19", "DeformConv", [N("DeformConv", ["x", "w", "off"], ["y"])],
             {"x": (1, 2, 4, 5)}, inits={"w": w(3, 2, 2, 2), "off": w(1, 8, 3, 4)}, opset=19)
    with pytest.raises(UnsupportedOpError, match="float64 below opset 20"):
        vjp(c.model, wrt=["x"], of=["y"])
