"""neuromask_onnx.simplify: each pass keeps the model's outputs and gradients, and does fire.

Each case is a small model in one exporter's style, built here with onnx.helper. The prepared
graph (constants folded, simplified) is run as a model of its own and compared with the
original; the instrumented model's mask gradient with simplification on is compared with the
one without, and passes the float64 dot-product test on onnx's reference evaluator.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from neuromask_onnx import instrument, io_names, simplify
from neuromask_onnx.gradcheck import check_vjp
from neuromask_onnx.graph import finish_model, prepare, pruned

F32, F64 = TensorProto.FLOAT, TensorProto.DOUBLE


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], shape: list[int],
           dtype: int = F32) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", dtype, shape)],
                          [helper.make_tensor_value_info("y", dtype, [1, 5])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


def _head(x: str, c: int, inits: dict[str, np.ndarray], rng: np.random.Generator,
          dt: type) -> list[onnx.NodeProto]:
    """GlobalAveragePool, Flatten, Gemm to 5 classes, reading x with c channels."""
    inits["hw"] = rng.standard_normal((5, c)).astype(dt)
    inits["hb"] = rng.standard_normal(5).astype(dt)
    return [helper.make_node("GlobalAveragePool", [x], ["gp"]),
            helper.make_node("Flatten", ["gp"], ["fl"]),
            helper.make_node("Gemm", ["fl", "hw", "hb"], ["y"], transB=1)]


def _conv(name: str, x: str, cin: int, cout: int, inits: dict[str, np.ndarray],
          rng: np.random.Generator, dt: type, **attrs: object) -> onnx.NodeProto:
    inits[name + "_w"] = (0.3 * rng.standard_normal((cout, cin, 3, 3))).astype(dt)
    inits[name + "_b"] = rng.standard_normal(cout).astype(dt)
    return helper.make_node("Conv", [x, name + "_w", name + "_b"], [name], **attrs)


def pad_model(dt: type = np.float32) -> onnx.ModelProto:
    """Static SAME padding: asymmetric zero Pad before a strided Conv, and one before two
    Convs (one with pads of its own)."""
    rng, inits = np.random.default_rng(1), {}
    inits["p1"] = np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64)
    inits["p2"] = np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)
    nodes = [helper.make_node("Pad", ["x", "p1"], ["xp"]),
             _conv("c1", "xp", 3, 4, inits, rng, dt, strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Pad", ["r1", "p2"], ["rp"]),
             _conv("c2", "rp", 4, 4, inits, rng, dt),
             _conv("c3", "rp", 4, 4, inits, rng, dt, pads=[1, 0, 1, 2], dilations=[2, 2]),
             helper.make_node("Add", ["c2", "c3"], ["s"])]
    return _model(nodes + _head("s", 4, inits, rng, dt), inits, [1, 3, 9, 9],
                  F64 if dt is np.float64 else F32)


def affine_model(dt: type = np.float32) -> onnx.ModelProto:
    """BatchNormalization after one Conv; Keras-3-style (x - mean) * rstd * gamma + beta with
    [C,1,1], [1,C,1,1] and scalar constants after another, then a Div and a reversed Sub."""
    rng, inits = np.random.default_rng(2), {}
    c = 4
    for k, lo in (("g", 0.5), ("be", -0.5), ("mu", -0.5), ("var", 0.5)):
        inits[k] = rng.uniform(lo, lo + 1.0, c).astype(dt)
    inits["mean3"] = rng.standard_normal((c, 1, 1)).astype(dt)
    inits["rstd4"] = rng.uniform(0.5, 1.5, (1, c, 1, 1)).astype(dt)
    inits["two"] = np.array(2.0, dt)
    inits["beta3"] = rng.standard_normal((c, 1, 1)).astype(dt)
    nodes = [_conv("c1", "x", 3, c, inits, rng, dt, pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn"],
                              epsilon=1e-3),
             helper.make_node("Relu", ["bn"], ["r1"]),
             _conv("c2", "r1", c, c, inits, rng, dt),
             helper.make_node("Sub", ["c2", "mean3"], ["t1"]),
             helper.make_node("Mul", ["rstd4", "t1"], ["t2"]),
             helper.make_node("Mul", ["t2", "two"], ["t3"]),
             helper.make_node("Add", ["t3", "beta3"], ["t4"]),
             helper.make_node("Div", ["t4", "two"], ["t5"]),
             helper.make_node("Sub", ["beta3", "t5"], ["t6"])]
    return _model(nodes + _head("t6", c, inits, rng, dt), inits, [1, 3, 8, 8],
                  F64 if dt is np.float64 else F32)


def shared_model(dt: type = np.float32) -> onnx.ModelProto:
    """A Conv whose output is read by a BatchNormalization and by a residual Add: the
    batch norm cannot be folded (the Add needs the raw convolution)."""
    rng, inits = np.random.default_rng(3), {}
    for k in ("g", "be", "mu"):
        inits[k] = rng.uniform(0.5, 1.5, 3).astype(dt)
    inits["var"] = rng.uniform(0.5, 1.5, 3).astype(dt)
    nodes = [_conv("c1", "x", 3, 3, inits, rng, dt, pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn"]),
             helper.make_node("Add", ["bn", "c1"], ["s"])]
    return _model(nodes + _head("s", 3, inits, rng, dt), inits, [1, 3, 6, 6],
                  F64 if dt is np.float64 else F32)


def nhwc_model(dt: type = np.float32) -> onnx.ModelProto:
    """tf2onnx-style NHWC islands: Conv, Transpose to NHWC, Clip, Add of a [C] constant and a
    residual in NHWC, Transpose back to NCHW for the next Conv; keep-dims ReduceMean over
    H, W in NHWC at the end."""
    rng, inits = np.random.default_rng(4), {}
    c = 4
    inits["bias_c"] = rng.standard_normal(c).astype(dt)
    inits["lo"], inits["hi"] = np.array(0.0, dt), np.array(6.0, dt)
    inits["axes"] = np.array([1, 2], np.int64)
    inits["flat"] = np.array([1, c], np.int64)
    inits["hw"] = rng.standard_normal((5, c)).astype(dt)
    to_nhwc, to_nchw = [0, 2, 3, 1], [0, 3, 1, 2]
    nodes = [_conv("c1", "x", 3, c, inits, rng, dt, pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c1"], ["t1"], perm=to_nhwc),
             helper.make_node("Clip", ["t1", "lo", "hi"], ["a1"]),
             helper.make_node("Add", ["a1", "bias_c"], ["a2"]),
             helper.make_node("Transpose", ["a2"], ["t2"], perm=to_nchw),
             _conv("c2", "t2", c, c, inits, rng, dt, pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c2"], ["t3"], perm=to_nhwc),
             helper.make_node("Add", ["t3", "a2"], ["a3"]),
             helper.make_node("ReduceMean", ["a3", "axes"], ["m"], keepdims=1),
             helper.make_node("Reshape", ["m", "flat"], ["fl"]),
             helper.make_node("MatMul", ["fl", "hwT"], ["y"])]
    inits["hwT"] = inits.pop("hw").T.copy()
    return _model(nodes, inits, [1, 3, 6, 6], F64 if dt is np.float64 else F32)


def cast_model(dt: type = np.float32) -> onnx.ModelProto:
    """Keras-3-style Casts: to the same type after an activation, and a float32 -> float64 ->
    float32 round trip; a float32 -> float16 -> float32 one (lossy) must stay. The float64
    version (for the dot-product test, where a float16 step would swallow the perturbation)
    has same-type Casts only."""
    rng, inits = np.random.default_rng(5), {}
    f64 = dt is np.float64
    own = F64 if f64 else F32
    nodes = [_conv("c1", "x", 3, 4, inits, rng, dt, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"]),
             helper.make_node("Cast", ["r"], ["k1"], to=own),
             helper.make_node("Cast", ["k1"], ["k2"], to=F64),
             helper.make_node("Cast", ["k2"], ["k3"], to=own),
             helper.make_node("Cast", ["k3"], ["h1"], to=own if f64 else TensorProto.FLOAT16),
             helper.make_node("Cast", ["h1"], ["h2"], to=own)]
    return _model(nodes + _head("h2", 4, inits, rng, dt), inits, [1, 3, 6, 6], own)


# builder, op that must disappear (count after / before), input shape, pass name
CASES: dict[str, tuple[Callable[..., onnx.ModelProto], str, int, str]] = {
    "pad": (pad_model, "Pad", 0, "pad_into_conv"),
    "affine": (affine_model, "BatchNormalization", 0, "affine_into_conv"),
    "shared_conv_output": (shared_model, "BatchNormalization", 1, "affine_into_conv"),
    "nhwc": (nhwc_model, "Transpose", 0, "transposes"),
    "cast": (cast_model, "Cast", 2, "casts"),
}


def _prepared(model: onnx.ModelProto, on: bool, skip: tuple[str, ...] = ()) -> onnx.ModelProto:
    """The prepared (folded, maybe simplified) graph as a runnable model."""
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    with simplify.switched(on, skip):
        g = prepare(model, {"x": shape})
    read = {i for n in g.nodes for i in n.input}
    return finish_model(g, g.nodes, list(model.graph.input), list(model.graph.output),
                        {k: v for k, v in g.consts.items() if k in read}, "p")


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in s.run(None, feeds)]


def _x(model: onnx.ModelProto, rng: np.random.Generator) -> np.ndarray:
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return rng.standard_normal(shape).astype(np.float32)


def _count(model: onnx.ModelProto, op: str) -> int:
    return Counter(n.op_type for n in model.graph.node)[op]


@pytest.mark.parametrize("name", list(CASES))
def test_simplification_keeps_the_outputs_and_fires(name: str, rng: np.random.Generator) -> None:
    build, op, left, pass_name = CASES[name]
    model = build()
    before = model.SerializeToString()
    x = _x(model, rng)
    want = _run(model, {"x": x})[0]
    on, off, skipped = _prepared(model, True), _prepared(model, False), \
        _prepared(model, True, (pass_name,))
    assert model.SerializeToString() == before  # the caller's model is never mutated
    got = _run(on, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert _count(off, op) == _count(model, op)
    assert _count(on, op) == left
    if name != "shared_conv_output":
        assert left < _count(model, op)
        assert _count(skipped, op) == _count(model, op)  # it is this pass that fires


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_is_unchanged_and_passes_the_dot_product_test(
        name: str, rng: np.random.Generator) -> None:
    build = CASES[name][0]
    model = build()
    x = _x(model, rng)
    feeds = {"x": x, io_names.MASK: rng.uniform(0.2, 0.9, (1, 1, *x.shape[2:])).astype(np.float32),
             io_names.TARGET: np.array([3], np.int64)}
    with simplify.switched(False):
        ref = dict(zip(["loss", "grad", "probs"], _run(instrument(model), feeds), strict=True))
    with simplify.switched(True, skip=()):  # every pass, also those off by default
        got = dict(zip(["loss", "grad", "probs"], _run(instrument(model), feeds), strict=True))
        m64 = pruned(instrument(build(np.float64)), [io_names.LOSS])
    for k, want in ref.items():
        np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    feeds64 = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}
    result = check_vjp(m64, feeds64, rng=rng, wrt=[io_names.MASK, "x"], eps=1e-6,
                       backend="reference")
    assert result.error < 1e-5, result


def test_switch_off_leaves_the_graph_as_folded() -> None:
    model = pad_model()
    with simplify.switched(False):
        g = prepare(model, {"x": (1, 3, 9, 9)})
    assert [n.op_type for n in g.nodes] == [n.op_type for n in model.graph.node]


def test_passes_that_did_not_pay_are_off_by_default() -> None:
    """casts and transposes bought nothing measurable (README): the default skips them."""
    assert {"casts", "transposes"} == simplify.DEFAULT_SKIP
    g = prepare(nhwc_model(), {"x": (1, 3, 6, 6)})
    assert [n.op_type for n in g.nodes].count("Transpose") == 3
    g = prepare(pad_model(), {"x": (1, 3, 9, 9)})
    assert "Pad" not in [n.op_type for n in g.nodes]


def test_a_graph_output_is_never_removed() -> None:
    """A same-type Cast that produces the graph output stays: its name is the contract."""
    rng, inits = np.random.default_rng(6), {}
    nodes = [*_head("x", 3, inits, rng, np.float32)]
    nodes[-1] = helper.make_node("Gemm", ["fl", "hw", "hb"], ["z"], transB=1)
    nodes.append(helper.make_node("Cast", ["z"], ["y"], to=F32))
    model = _model(nodes, inits, [1, 3, 4, 4])
    with simplify.switched(True, skip=()):
        g = prepare(model, {"x": (1, 3, 4, 4)})
    assert g.nodes[-1].op_type == "Cast"
    assert g.nodes[-1].output[0] == "y"
