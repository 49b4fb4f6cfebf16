"""The rule contract (`vjp_rules.registry`): `Needs`, the shared helpers, the fused SiLU.

A rule is told which of its node's inputs need a gradient and builds only those (no node of
the gradient of an input it was not asked for); ties of a max / min split the gradient evenly,
as torch's autograd does; the reverse pass's fused SiLU names its sigmoid in an attribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from neuromask_onnx import reverse, vjp
from neuromask_onnx.emitter import Emitter
from neuromask_onnx.graph import prepare
from neuromask_onnx.vjp_rules import VJP_RULES
from neuromask_onnx.vjp_rules.registry import Needs

D = TensorProto.DOUBLE


def _model(nodes: Sequence[onnx.NodeProto], inputs: dict[str, tuple[int, ...]],
           outputs: dict[str, tuple[int, ...]],
           inits: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    g = helper.make_graph(
        list(nodes), "m", [helper.make_tensor_value_info(k, D, list(v)) for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, D, list(v)) for k, v in outputs.items()],
        [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    return m


def test_needs_answers_by_index_and_by_name() -> None:
    needs = Needs.of(["a", "", "b", "a"], {"a", "c"})
    assert [needs[i] for i in range(5)] == [True, False, False, True, False]
    assert "a" in needs
    assert "b" not in needs
    assert "" not in needs
    assert "c" not in needs  # not an input of this node
    assert needs
    assert not Needs.of(["a"], set())
    moved = needs.moved_to(["p", "q", "r", "s"])
    assert [moved[i] for i in range(4)] == [True, False, False, True]


RULE_CASES: dict[str, tuple[list[onnx.NodeProto], dict[str, tuple[int, ...]],
                            dict[str, np.ndarray]]] = {
    "mul": ([helper.make_node("Mul", ["a", "b"], ["y"])], {"a": (2, 3), "b": (3,)}, {}),
    "matmul": ([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": (2, 3), "b": (3, 4)}, {}),
    "gemm": ([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1, alpha=0.5)],
             {"a": (2, 3), "b": (4, 3), "c": (4,)}, {}),
    "max": ([helper.make_node("Max", ["a", "b"], ["y"])], {"a": (2, 3), "b": (2, 3)}, {}),
    "scatter_max": ([helper.make_node("ScatterElements", ["a", "i", "b"], ["y"], axis=0,
                                      reduction="max")],
                    {"a": (3, 2), "b": (2, 2)}, {"i": np.array([[0, 2], [0, 1]], np.int64)}),
}


def _ancestors(nodes: Sequence[onnx.NodeProto], targets: Sequence[str]) -> set[int]:
    need, found = set(targets), set()
    for k in range(len(nodes) - 1, -1, -1):
        if any(o in need for o in nodes[k].output):
            found.add(k)
            need.update(nodes[k].input)
    return found


@pytest.mark.parametrize("cid", list(RULE_CASES))
@pytest.mark.parametrize("wanted", [("a",), ("b",), ("a", "b")])
def test_a_rule_builds_only_the_gradients_it_is_asked_for(cid: str,
                                                          wanted: tuple[str, ...]) -> None:
    nodes, inputs, inits = RULE_CASES[cid]
    m = _model(nodes, inputs, {}, inits)
    node = m.graph.node[0]
    shapes = {**inputs, **{k: v.shape for k, v in inits.items()}}
    out_shape = {"mul": (2, 3), "matmul": (2, 4), "gemm": (2, 4), "max": (2, 3),
                 "scatter_max": (3, 2)}[cid]
    m.graph.output.append(helper.make_tensor_value_info("y", D, list(out_shape)))
    g = prepare(m, {k: v for k, v in shapes.items() if k in inputs})
    op = Emitter(g)
    g.dtypes["gy"], g.shapes["gy"] = D, out_shape
    gxs = VJP_RULES[node.op_type](op, node, ["gy"], Needs.of(node.input, set(wanted)))
    assert len(gxs) == len(node.input)
    for name, gx in zip(node.input, gxs, strict=True):
        assert (gx is not None) is (name in wanted), (name, gx)
    # Every node the rule emitted computes one of the gradients it was asked for.
    asked = [gx for gx in gxs if gx is not None]
    assert _ancestors(op.nodes, asked) == set(range(len(op.nodes)))


def _vjp_run(m: onnx.ModelProto, feeds: dict[str, np.ndarray], wrt: list[str]
             ) -> list[np.ndarray]:
    vm = vjp(m, wrt=wrt, of=["y"])
    y = np.asarray(ReferenceEvaluator(m).run(["y"], feeds)[0])  # type: ignore[index]
    cot = np.arange(1.0, y.size + 1.0).reshape(y.shape)
    outs = ReferenceEvaluator(vm).run([f"nm_grad_{w}" for w in wrt], {**feeds, "nm_cot_y": cot})
    return [np.asarray(o) for o in outs]


def test_ties_split_the_gradient_evenly_as_torch_does() -> None:
    torch = pytest.importorskip("torch")
    a = np.array([[1.0, 2.0, 3.0], [4.0, 4.0, -1.0]])
    b = np.array([[1.0, 5.0, 3.0], [4.0, 0.0, -2.0]])  # ties with a at 3 positions
    x = np.array([[[[2.0, 2.0], [1.0, 2.0]], [[0.0, -1.0], [0.0, 0.0]]]])  # [1, 2, 2, 2]
    cases: list[tuple[onnx.ModelProto, dict[str, np.ndarray], Any]] = [
        (_model([helper.make_node("Max", ["a", "b"], ["y"])], {"a": (2, 3), "b": (2, 3)},
                {"y": (2, 3)}), {"a": a, "b": b}, torch.maximum),
        (_model([helper.make_node("Min", ["a", "b"], ["y"])], {"a": (2, 3), "b": (2, 3)},
                {"y": (2, 3)}), {"a": a, "b": b}, torch.minimum),
        (_model([helper.make_node("ReduceMax", ["x"], ["y"], axes=[2, 3], keepdims=0)],
                {"x": (1, 2, 2, 2)}, {"y": (1, 2)}), {"x": x},
         lambda t: torch.amax(t, dim=(2, 3))),
        (_model([helper.make_node("ReduceMin", ["x"], ["y"], axes=[1], keepdims=1)],
                {"x": (1, 2, 2, 2)}, {"y": (1, 1, 2, 2)}), {"x": x},
         lambda t: torch.amin(t, dim=1, keepdim=True)),
        (_model([helper.make_node("GlobalMaxPool", ["x"], ["y"])], {"x": (1, 2, 2, 2)},
                {"y": (1, 2, 1, 1)}), {"x": x},
         lambda t: torch.amax(t, dim=(2, 3), keepdim=True)),
    ]
    for m, feeds, fn in cases:
        m.opset_import[0].version = 13 if m.graph.node[0].op_type.startswith("Reduce") else 18
        names = list(feeds)
        ours = _vjp_run(m, feeds, names)
        ts = [torch.tensor(feeds[k], requires_grad=True) for k in names]
        y = fn(*ts)
        y.backward(torch.arange(1.0, y.numel() + 1.0, dtype=torch.float64).reshape(y.shape))
        for k, t, got in zip(names, ts, ours, strict=True):
            assert t.grad is not None
            np.testing.assert_allclose(got, t.grad.numpy(), rtol=0, atol=1e-12,
                                       err_msg=f"{m.graph.node[0].op_type} d/d{k}")


def test_the_fused_silu_names_its_sigmoid_in_an_attribute() -> None:
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])]
    fused = reverse.fuse_for_backward(nodes, nodes)
    assert [n.op_type for n in fused] == ["Swish"]
    assert fused[0].domain == reverse.FUSED
    assert not fused[0].doc_string
    assert list(fused[0].input) == ["x"]
    assert {a.name: helper.get_attribute_value(a) for a in fused[0].attribute} == {
        "sigmoid": b"s"}
