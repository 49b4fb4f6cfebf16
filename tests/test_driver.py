"""Structural tests of the driver (`reverse.vjp`, `rewrite.instrument`).

Fan-out is summed, values that do not depend on the input get no gradient nodes, an op
without a rule is an error only where the gradient reaches it, names the model already uses
are never reused, the caller's model is never touched, old opsets are converted, a dynamic
batch axis is pinned, and the result loads in onnxruntime after the full ONNX check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from neuromask_onnx import UnsupportedOpError, instrument, io_names, oracle, reverse, vjp
from neuromask_onnx.errors import ModelContractError
from neuromask_onnx.gradcheck import check_vjp
from neuromask_onnx.vjp_rules import VJP_RULES

D, F = TensorProto.DOUBLE, TensorProto.FLOAT
N = helper.make_node
NO_RULE = "Trilu"  # a differentiable op that has no VJP rule


def mk(nodes: Sequence[onnx.NodeProto], inputs: dict[str, Sequence[Any]],
       outputs: Sequence[str] = ("y",), inits: dict[str, np.ndarray] | None = None,
       opset: int = 18, dtype: int = F) -> onnx.ModelProto:
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    g = helper.make_graph(
        list(nodes), "m",
        [helper.make_tensor_value_info(k, dtype, list(s)) for k, s in inputs.items()],
        [helper.make_tensor_value_info(o, dtype, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v).astype(np_dtype)
                                 if np.asarray(v).dtype == np.float64 else np.asarray(v), k)
         for k, v in (inits or {}).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def classifier(rng: np.random.Generator, opset: int = 18, batch: Any = 1) -> onnx.ModelProto:
    """Conv(+bias) -> Relu -> GlobalAveragePool -> Flatten -> Gemm: weights are initializers."""
    return mk(
        [N("Conv", ["x", "W", "b"], ["c"], pads=[1, 1, 1, 1]), N("Relu", ["c"], ["r"]),
         N("GlobalAveragePool", ["r"], ["p"]), N("Flatten", ["p"], ["f"]),
         N("Gemm", ["f", "G", "h"], ["y"], transB=1)],
        {"x": [batch, 3, 6, 6]},
        inits={"W": rng.standard_normal((5, 3, 3, 3)), "b": rng.standard_normal(5),
               "G": rng.standard_normal((4, 5)), "h": rng.standard_normal(4)},
        opset=opset)


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def depends_on(model: onnx.ModelProto, sources: set[str]) -> set[str]:
    """Every value computed (transitively) from `sources`."""
    found = set(sources)
    for node in model.graph.node:
        if any(i in found for i in node.input):
            found.update(node.output)
    return found


# --------------------------------------------------------------------------- fan-out


def test_fan_out_of_an_input_is_summed(rng: np.random.Generator) -> None:
    """y = x * x: both operands are x, the gradient is 2 x v."""
    m = mk([N("Mul", ["x", "x"], ["y"])], {"x": [2, 3]}, dtype=D)
    x, v = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    _, gx = ReferenceEvaluator(vjp(m)).run(None, {"x": x, "nm_cot_y": v})
    np.testing.assert_allclose(gx, 2 * x * v, rtol=1e-12)


def test_fan_out_of_an_intermediate_value_is_summed(rng: np.random.Generator) -> None:
    """t feeds two branches that meet again; its gradient is the sum of both."""
    m = mk([N("Tanh", ["x"], ["t"]), N("Sin", ["t"], ["a"]), N("Mul", ["t", "k"], ["b"]),
            N("Add", ["a", "b"], ["y"])], {"x": [2, 3]}, inits={"k": rng.standard_normal(3)},
           dtype=D)
    vm = vjp(m)
    assert any(n.op_type == "Sum" for n in vm.graph.node)
    assert check_vjp(m, {"x": rng.standard_normal((2, 3))}, rng=rng).error < 1e-8


@pytest.mark.parametrize("dtype", [D, F])
def test_an_expanded_contribution_joins_by_a_broadcasting_add(rng: np.random.Generator,
                                                              dtype: int) -> None:
    """A squeeze-excite block, x * sigmoid(GlobalAveragePool(x)): the pooled path's gradient
    reaches x as [N, C, 1, 1] and is added with broadcasting, never expanded."""
    m = mk([N("GlobalAveragePool", ["x"], ["p"]), N("Sigmoid", ["p"], ["s"]),
            N("Mul", ["x", "s"], ["y"])], {"x": [2, 3, 4, 5]}, dtype=dtype)
    vm = vjp(m)
    assert not any(n.op_type == "Expand" for n in vm.graph.node)
    x = rng.standard_normal((2, 3, 4, 5)).astype(helper.tensor_dtype_to_np_dtype(dtype))
    if dtype == D:
        assert check_vjp(m, {"x": x}, rng=rng).error < 1e-8
    else:
        assert check_vjp(m, {"x": x}, rng=rng, eps=1e-3, backend="onnxruntime").error < 2e-3


def test_a_model_output_that_is_also_used_inside(rng: np.random.Generator) -> None:
    """t is a graph output and feeds y: cotangents of both outputs reach x."""
    m = mk([N("Sigmoid", ["x"], ["t"]), N("Mul", ["t", "t"], ["y"])], {"x": [4]},
           outputs=["t", "y"], dtype=D)
    assert check_vjp(m, {"x": rng.standard_normal(4)}, rng=rng).error < 1e-8


# --------------------------------------------------------------------------- untouched values


class GradientLog:
    """Wraps every rule to record which input names received a gradient."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.received: dict[str, str] = {}
        for op_type, rule in list(VJP_RULES.items()):
            monkeypatch.setitem(VJP_RULES, op_type, self._wrap(rule))

    def _wrap(self, rule: Any) -> Any:
        def logged(op: Any, node: onnx.NodeProto, gys: Any, needs: Any) -> Any:
            gxs = rule(op, node, gys, needs)
            for name, gx in zip(node.input, gxs, strict=True):
                if gx is not None:
                    self.received[name] = gx
            return gxs

        return logged


def test_weights_get_no_gradient_nodes(rng: np.random.Generator,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    m = classifier(rng)
    weights = {i.name for i in m.graph.initializer}
    log = GradientLog(monkeypatch)
    inst = instrument(m)
    assert io_names.XBAR in log.received  # the (masked) input did get one
    assert not weights & set(log.received), "a rule emitted a weight gradient"
    consumed = {i for n in inst.graph.node for i in n.input}
    assert not consumed & {log.received[k] for k in log.received if k in weights}


def test_weight_gradients_would_be_seen(rng: np.random.Generator,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: mark the weights as if they depended on the mask."""
    m = mk([N("Gemm", ["x", "G", "h"], ["y"], transB=1)], {"x": [1, 5]},
           inits={"G": rng.standard_normal((4, 5)), "h": rng.standard_normal(4)})
    marked = reverse.marked_values

    def marks_weights(nodes: Any, sources: Sequence[str], g: Any) -> set[str]:
        return marked(nodes, [*sources, "G", "h"], g)

    monkeypatch.setattr(reverse, "marked_values", marks_weights)
    log = GradientLog(monkeypatch)
    instrument(m)
    assert {"G", "h"} <= set(log.received)


def test_a_float_input_not_differentiated_gets_no_gradient(rng: np.random.Generator) -> None:
    """vjp(wrt=[x]) on y = x * s: s is a graph input but nothing is computed for it."""
    m = mk([N("Mul", ["x", "s"], ["y"])], {"x": [2, 3], "s": [2, 3]}, dtype=D)
    vm = vjp(m, wrt=["x"])
    assert [o.name for o in vm.graph.output] == ["y", "nm_grad_x"]
    backward = depends_on(vm, {"nm_cot_y"})
    # One Mul(cot, s) and the output Identity: no node multiplies the cotangent by x.
    assert not [n for n in vm.graph.node if "x" in n.input and set(n.output) & backward]


def test_shape_only_paths_carry_no_gradient(rng: np.random.Generator) -> None:
    """Shape(x) -> Cast -> Mul: the float made from x's shape gets no rule and no gradient."""
    m = mk([N("Shape", ["x"], ["s"]), N("Cast", ["s"], ["sf"], to=D),
            N("ReduceSum", ["sf"], ["n"], keepdims=0), N("Mul", ["x", "n"], ["y"])],
           {"x": [2, 3]}, dtype=D)
    x, v = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    _, gx = ReferenceEvaluator(vjp(m)).run(None, {"x": x, "nm_cot_y": v})
    np.testing.assert_allclose(gx, 5.0 * v)


def test_an_output_shape_set_by_the_input_s_values_is_refused() -> None:
    """OneHot's depth as the input (ONNX's test_onehot_negative_indices): no static shape of
    y exists, and the one a zero input gives ([3, 0]) would be wrong at depth 10."""
    m = mk([N("OneHot", ["i", "depth", "vals"], ["y"], axis=1)], {"depth": []},
           inits={"i": np.array([0, -7, -8]), "vals": np.array([1.0, 3.0])})
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", F, [3, 10]))
    precise = (r"the shape of 'y' depends on the values of the model's float inputs "
               r"\(zeros give \[3, 0\]")
    if oracle.release(onnx.__version__) < (1, 23):
        # onnx < 1.23's shape inference gives y a partial shape, so the zero/one probe does
        # not run: the refusal is the generic one-line reason instead
        precise = r"value 'y' has no static shape after shape inference"
    with pytest.raises(ModelContractError, match=precise):
        vjp(m)


# --------------------------------------------------------------------------- unsupported ops


def test_unsupported_op_on_the_path_names_op_and_node(rng: np.random.Generator) -> None:
    m = mk([N("Relu", ["x"], ["r"]), N(NO_RULE, ["r"], ["y"], name="the_norm")],
           {"x": [1, 4]})
    with pytest.raises(UnsupportedOpError, match=f"{NO_RULE}.*'the_norm'") as info:
        instrument(m)
    assert info.value.op_type == NO_RULE
    assert info.value.node_name == "the_norm"
    with pytest.raises(UnsupportedOpError, match=NO_RULE):
        vjp(m)


def test_unsupported_op_on_another_output_is_fine(rng: np.random.Generator) -> None:
    m = mk([N("MatMul", ["x", "W"], ["y"]), N(NO_RULE, ["x"], ["z"])], {"x": [2, 4]},
           outputs=["y", "z"], inits={"W": rng.standard_normal((4, 3))})
    inst = instrument(m, batch_size=2)  # explains output y
    assert NO_RULE not in {n.op_type for n in inst.graph.node}  # pruned: not needed
    vm = vjp(m, of=["y"])
    assert [o.name for o in vm.graph.output] == ["y", "nm_grad_x"]
    with pytest.raises(UnsupportedOpError, match=NO_RULE):
        vjp(m, of=["y", "z"])


def test_unsupported_op_on_a_constant_is_fine(rng: np.random.Generator) -> None:
    """An op without a rule that only transforms weights is not on the gradient path."""
    m = mk([N(NO_RULE, ["W"], ["Wn"]), N("MatMul", ["x", "Wn"], ["y"])], {"x": [1, 4]},
           inits={"W": rng.standard_normal((4, 3))})
    inst = instrument(m)
    x = rng.standard_normal((1, 4)).astype(np.float32)
    out = run_ort(inst, {"x": x, "nm_mask": np.ones((1, 4), np.float32),
                         "nm_target": np.array([1])})
    assert np.all(np.isfinite(out["nm_grad_mask"]))


def test_unsupported_op_on_a_value_that_is_not_differentiated(rng: np.random.Generator) -> None:
    """NO_RULE on input s (not in wrt) feeds y = x * norm(s): x's gradient does not need it."""
    m = mk([N(NO_RULE, ["s"], ["sn"]), N("Mul", ["x", "sn"], ["y"])],
           {"x": [2, 3], "s": [2, 3]}, dtype=D)
    feeds = {"x": rng.standard_normal((2, 3)), "s": rng.standard_normal((2, 3))}
    assert check_vjp(m, feeds, rng=rng, wrt=["x"]).error < 1e-8


# --------------------------------------------------------------------------- names


def test_names_the_model_already_uses_are_not_reused(rng: np.random.Generator) -> None:
    """A model full of nm_* names (as if instrumented twice) still gives the right gradient."""
    taken = ["nm_mul", "nm_c", "nm_c_1", "nm_reshape", "nm_sum", "nm_cast", "nm_greater",
             "nm_transpose", "nm_matmul", "nm_reducesum"]
    nodes = [N("Mul", ["x", "x"], [taken[0]], name="nm_n_Mul"),
             N("Relu", [taken[0]], [taken[4]], name="nm_n_Relu"),
             N("Mul", [taken[4], "nm_c"], [taken[2]], name="nm_n_Mul_1"),
             N("MatMul", [taken[2], "nm_c_2"], [taken[8]]),
             N("Transpose", [taken[8]], [taken[7]], perm=[1, 0]),
             N("Add", [taken[7], "nm_reducesum"], ["y"])]
    m = mk(nodes, {"x": [2, 3]},
           inits={"nm_c": rng.standard_normal(3), "nm_c_2": rng.standard_normal((3, 4)),
                  "nm_reducesum": rng.standard_normal((4, 2))}, dtype=D)
    vm = vjp(m)
    outs = [o for n in vm.graph.node for o in n.output]
    assert len(outs) == len(set(outs))  # single static assignment
    names = [n.name for n in vm.graph.node if n.name]
    assert len(names) == len(set(names))
    x = rng.standard_normal((2, 3)) + 0.1
    assert check_vjp(m, {"x": x}, rng=rng).error < 1e-8


@pytest.mark.parametrize("name", [io_names.XBAR, io_names.MASK, io_names.LOSS, io_names.PROBS])
def test_a_model_using_a_reserved_name_is_refused(name: str, rng: np.random.Generator) -> None:
    m = mk([N("Relu", ["x"], [name]), N("MatMul", [name, "W"], ["y"])], {"x": [1, 4]},
           inits={"W": rng.standard_normal((4, 3))})
    with pytest.raises(ModelContractError, match=name):
        instrument(m)


def test_vjp_refuses_a_model_using_its_io_names(rng: np.random.Generator) -> None:
    m = mk([N("Relu", ["x"], ["nm_grad_x"]), N("Neg", ["nm_grad_x"], ["y"])], {"x": [3]})
    with pytest.raises(ModelContractError, match="nm_grad_x"):
        vjp(m)


def test_instrument_avoids_the_model_s_nm_names(rng: np.random.Generator) -> None:
    """nm_* values and node names in the model (as if made by us) do not collide."""
    m = mk([N("Mul", ["nm_mask_x", "k"], ["nm_mul"], name="nm_n_Mul"),
            N("Relu", ["nm_mul"], ["nm_cast"], name="nm_n_Relu"),
            N("MatMul", ["nm_cast", "W"], ["nm_matmul"], name="nm_n_MatMul"),
            N("Identity", ["nm_matmul"], ["y"], name="nm_n_grad")],
           {"nm_mask_x": [1, 4]},
           inits={"k": rng.standard_normal(4), "W": rng.standard_normal((4, 3))})
    inst = instrument(m)
    names = [n.name for n in inst.graph.node]
    assert len(names) == len(set(names))
    x = rng.standard_normal((1, 4)).astype(np.float32)
    mask = rng.uniform(0.2, 1.0, (1, 4)).astype(np.float32)
    out = run_ort(inst, {"nm_mask_x": x, "nm_mask": mask, "nm_target": np.array([2])})
    loss = _loss_fn(inst, x, np.array([2]))
    num = np.array([(loss(mask + e) - loss(mask - e)) / 2e-3 for e in np.eye(4)[:, None, :] * 1e-3])
    np.testing.assert_allclose(out["nm_grad_mask"].reshape(-1), num.reshape(-1), rtol=1e-2,
                               atol=1e-4)


def _loss_fn(inst: onnx.ModelProto, x: np.ndarray, target: np.ndarray) -> Any:
    xname = next(i.name for i in inst.graph.input if i.name not in
                 (io_names.MASK, io_names.TARGET, io_names.BASELINE))
    sess = ort.InferenceSession(inst.SerializeToString(), providers=["CPUExecutionProvider"])

    def loss(mask: np.ndarray) -> float:
        out = sess.run([io_names.LOSS], {xname: x, io_names.MASK: mask.astype(np.float32),
                                        io_names.TARGET: target})
        return float(np.sum(out[0].astype(np.float64)))

    return loss


# --------------------------------------------------------------------------- the caller's model


@pytest.mark.parametrize("opset", [11, 18])  # converted (copied by onnx) and not converted
def test_input_model_is_left_unmutated(opset: int, rng: np.random.Generator) -> None:
    m = classifier(rng, opset=opset, batch="N")
    before = m.SerializeToString(deterministic=True)
    instrument(m, batch_size=2)
    instrument(m, batch_size=1, wrt="input")
    fixed = classifier(rng, opset=opset)
    fixed_before = fixed.SerializeToString(deterministic=True)
    vjp(fixed)
    check_vjp(fixed, {"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)}, rng=rng,
              eps=1e-3, backend="onnxruntime")
    assert m.SerializeToString(deterministic=True) == before
    assert fixed.SerializeToString(deterministic=True) == fixed_before


@pytest.mark.parametrize("opset", [9, 11, 13])
def test_old_opsets_are_converted(opset: int, rng: np.random.Generator) -> None:
    """Old-style ops (Clip/Pad attributes, Upsample, 2-D Softmax) at old opsets."""
    nodes = [N("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             N("BatchNormalization", ["c", "s", "b", "mu", "var"], ["n"]),
             N("Clip", ["n"], ["r"], min=-6.0, max=6.0) if opset < 11
             else N("Clip", ["n", "lo", "hi"], ["r"]),
             N("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             N("Flatten", ["p"], ["f"]), N("Gemm", ["f", "G", "gb"], ["z"], transB=1),
             N("Softmax", ["z"], ["y"], axis=1)]
    inits = {"W": rng.standard_normal((4, 3, 3, 3)), "s": rng.uniform(0.5, 1.5, 4),
             "b": rng.standard_normal(4), "mu": rng.standard_normal(4),
             "var": rng.uniform(0.5, 1.5, 4), "lo": np.array(-6.0), "hi": np.array(6.0),
             "G": rng.standard_normal((5, 4 * 3 * 3)) * 0.3, "gb": rng.standard_normal(5)}
    m = mk(nodes, {"x": [2, 3, 6, 6]}, inits=inits, opset=opset)
    inst = instrument(m, batch_size=2)
    ver = next(o.version for o in inst.opset_import if o.domain in ("", "ai.onnx"))
    assert ver >= 18
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    target = np.array([1, 3])
    out = run_ort(inst, {"x": x, "nm_mask": np.ones((2, 1, 6, 6), np.float32),
                         "nm_target": target})
    # The instrumented probabilities are the original model's output.
    np.testing.assert_allclose(out[io_names.PROBS], run_ort(m, {"x": x})["y"], rtol=1e-4,
                               atol=1e-6)
    # Clip is (almost surely) inactive at +-6 and eps is small: no kink is crossed.
    assert check_vjp(m, {"x": x}, rng=rng, eps=1e-3, backend="onnxruntime").error < 2e-3


def test_dynamic_batch_axis_is_pinned(rng: np.random.Generator) -> None:
    m = classifier(rng, batch="batch")
    inst = instrument(m, batch_size=3)
    x_vi = next(i for i in inst.graph.input if i.name == "x")
    assert [d.dim_value for d in x_vi.type.tensor_type.shape.dim] == [3, 3, 6, 6]
    x = rng.standard_normal((3, 3, 6, 6)).astype(np.float32)
    out = run_ort(inst, {"x": x, "nm_mask": np.ones((3, 1, 6, 6), np.float32),
                         "nm_target": np.array([0, 1, 2])})
    assert out[io_names.LOSS].shape == (3,)
    assert out[io_names.GRAD_MASK].shape == (3, 1, 6, 6)
    with pytest.raises(ModelContractError, match="static"):
        vjp(m)  # vjp has no batch size to pin


def test_dynamic_spatial_axes_need_an_input_shape(rng: np.random.Generator) -> None:
    m = mk([N("GlobalAveragePool", ["x"], ["p"]), N("Flatten", ["p"], ["y"])],
           {"x": ["N", 3, "H", "W"]})
    with pytest.raises(ModelContractError, match="--input-shape"):
        instrument(m)
    inst = instrument(m, input_shape=[3, 5, 4], layout="NCHW")
    x_vi = next(i for i in inst.graph.input if i.name == "x")
    assert [d.dim_value for d in x_vi.type.tensor_type.shape.dim] == [1, 3, 5, 4]


def test_instrumented_model_passes_checker_and_loads_in_onnxruntime(
        rng: np.random.Generator) -> None:
    m = classifier(rng)
    m.ir_version = onnx.IR_VERSION  # as onnx.helper stamps it: newer than onnxruntime reads
    inst = instrument(m)
    onnx.checker.check_model(inst, full_check=True)
    assert inst.ir_version <= 10
    sess = ort.InferenceSession(inst.SerializeToString(), providers=["CPUExecutionProvider"])
    assert {o.name for o in sess.get_outputs()} == {io_names.LOSS, io_names.GRAD_MASK,
                                                    io_names.PROBS}
    added = {o for n in inst.graph.node for o in n.output} - {o for n in m.graph.node
                                                              for o in n.output}
    assert all(o.startswith("nm_") for o in added)


def test_masks_are_ordered_to_run_just_before_their_use(rng: np.random.Generator) -> None:
    """onnxruntime's default order is a reverse DFS from the outputs that visits a node's
    inputs highest node index first. Every value the gradient chain reads from the forward
    pass (the ReLU6 masks here) must therefore come from a node with a lower index than the
    chain's own operand, or it runs right after the forward pass and stays alive throughout."""
    m = mk([N("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), N("Clip", ["c", "lo", "hi"], ["r"]),
            N("Conv", ["r", "V"], ["d"], pads=[1, 1, 1, 1]), N("Relu", ["d"], ["e"]),
            N("Sigmoid", ["e"], ["s"]), N("GlobalAveragePool", ["s"], ["p"]),
            N("Flatten", ["p"], ["f"]), N("Gemm", ["f", "G"], ["y"], transB=1)],
           {"x": [1, 3, 6, 6]},
           inits={"W": rng.standard_normal((8, 3, 3, 3)), "V": rng.standard_normal((8, 8, 3, 3)),
                  "G": rng.standard_normal((4, 8)), "lo": np.float32(0), "hi": np.float32(6)})
    inst = instrument(m)
    nodes = list(inst.graph.node)
    index = {o: i for i, n in enumerate(nodes) for o in n.output}
    feeds_grad = {io_names.GRAD_MASK}
    for node in reversed(nodes):
        if set(node.output) & feeds_grad:
            feeds_grad.update(node.input)
    chain = depends_on(inst, {io_names.TARGET}) & feeds_grad
    mixed = 0
    for node in (n for n in nodes if n.op_type == "Mul" and set(n.output) & chain):
        ins = [i for i in node.input if i in index]
        side = [index[i] for i in ins if i not in chain]
        grad = [index[i] for i in ins if i in chain]
        if side and grad:
            mixed += 1
            assert max(side) < min(grad), (node.op_type, node.name)
    assert mixed >= 4  # the two Clip masks, the Relu mask, the Sigmoid factor


def _swish_model(share_sigmoid: bool) -> onnx.ModelProto:
    """y = x * sigmoid(x) (+ sigmoid(x) again when share_sigmoid: then no fusion)."""
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["m"])]
    if share_sigmoid:
        nodes.append(helper.make_node("Add", ["m", "s"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["m"], ["y"]))
    g = helper.make_graph(nodes, "swish", [helper.make_tensor_value_info("x", TensorProto.DOUBLE,
                                                                         [2, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 5])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("share_sigmoid", [False, True])
def test_swish_is_fused_for_the_backward_pass_and_stays_exact(
        rng: np.random.Generator, share_sigmoid: bool) -> None:
    m = _swish_model(share_sigmoid)
    fused = reverse.fuse_for_backward(list(m.graph.node), list(m.graph.node))
    kinds = [n.op_type for n in fused]
    # The sigmoid may only be folded into the Mul when nothing else reads it.
    assert ("Swish" in kinds) is (not share_sigmoid)
    assert ("Sigmoid" in kinds) is share_sigmoid
    result = check_vjp(m, {"x": rng.standard_normal((2, 5))}, rng=rng)
    assert result.error < 1e-7


def _step_outputs(x: np.ndarray, bound: float, above: bool, dtype: int) -> np.ndarray:
    """Run Emitter.step on onnxruntime over the values `x`."""
    from neuromask_onnx.graph import Emitter, finish_model, prepare

    vi = helper.make_tensor_value_info("x", dtype, list(x.shape))
    g = prepare(helper.make_model(helper.make_graph([], "s", [vi], [vi]),
                                  opset_imports=[helper.make_opsetid("", 18)]),
                {"x": x.shape})
    op = Emitter(g)
    out = op.step("x", bound, above=above)
    m = finish_model(g, op.nodes, [vi], [helper.make_tensor_value_info(out, dtype, None)],
                     op.new_consts, "step")
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


TINY = np.float32(2.0**-126)  # the smallest normal float32


@pytest.mark.parametrize("bound", [0.0, 6.0, -0.5, 0.7, 1e-20, -3e30, 3.4e38])
@pytest.mark.parametrize("above", [True, False])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.DOUBLE])
def test_step_masks_are_exact(bound: float, above: bool, dtype: int) -> None:
    """[x > b] / [x < b] exactly, at the bound, one float step either side and far away."""
    np_dt = helper.tensor_dtype_to_np_dtype(dtype)
    b = np_dt.type(bound)
    near = [b, np.nextafter(b, np_dt.type(np.inf)), np.nextafter(b, np_dt.type(-np.inf))]
    if b == 0 and dtype == TensorProto.FLOAT:  # float32 subnormals: the next test
        near = [b, TINY, -TINY]
    far = [0.0, -0.0, TINY, -TINY, 1e-30, -1e-30, 1.0, -1.0, 6.0, 3e38, -3e38, np.inf, -np.inf]
    x = np.array(near + far, dtype=np_dt)
    want = (x > b) if above else (x < b)
    got = _step_outputs(x, bound, above, dtype)
    np.testing.assert_array_equal(got, want.astype(np_dt))


def test_step_at_zero_is_fractional_only_below_2_to_minus_127() -> None:
    """The one documented inexact case: a subnormal 0 < x < 2^-127 against bound 0."""
    x = np.array([2.0**-127, 2.0**-128, 2.0**-140], dtype=np.float32)
    got = _step_outputs(x, 0.0, True, TensorProto.FLOAT)
    assert got[0] == 1.0
    assert 0.0 < got[1] < 1.0
    assert 0.0 < got[2] < 1.0
