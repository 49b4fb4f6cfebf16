"""The Loop rule (vjp_rules/loop.py): Loops differentiated by a reverse Loop, not unrolled.

Each case is the dot-product test (`neuromask_onnx.gradcheck`) in float64 on onnxruntime
(onnx's reference Loop cannot stack scan outputs): a long static loop (and that it stays one
Loop), a trip count fed at run time, a `while` whose condition depends on the data, scan
outputs, outer-scope reads (a weight given as an input, so it gets a gradient), a Loop inside
a data-dependent `If`, a Loop in a Loop, Scans rewritten as Loops (`unroll.scan_as_loop`; also
inside an `If`), a torch.jit.script `for` and `while` against torch autograd, and the refusals.
`UNROLL_LIMIT` set to 0 sends short loops to the rule too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from neuromask_onnx import unroll
from neuromask_onnx.errors import UnsupportedOpError
from neuromask_onnx.gradcheck import check_vjp
from neuromask_onnx.reverse import vjp

D = TensorProto.DOUBLE
N = helper.make_node


def _vi(name: str, shape: list[int] | None, dtype: int = D) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[str],
           inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "loop", inputs, [_vi(o, None) for o in outputs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    return m


def _tanh_loop(trips: int | None, scan: bool = False, cond: str = "") -> onnx.ModelProto:
    """h = tanh(h W + b) for `trips` iterations (None: the trip count M is an input); W and b
    are inputs read from the outer scope. `scan` also emits h * i per iteration; `cond`
    "data" stops the loop once sum(h) > 1 (a while on the data, at most 40 iterations)."""
    nodes = [N("MatMul", ["h_in", "W"], ["hw"]), N("Add", ["hw", "b"], ["pre"]),
             N("Tanh", ["pre"], ["h_out"])]
    if cond == "data":
        nodes += [N("ReduceSum", ["h_out"], ["tot"], keepdims=0),
                  N("Less", ["tot", "one"], ["c_out"])]
    else:
        nodes.append(N("Identity", ["c_in"], ["c_out"]))
    outs = [_vi("c_out", [], TensorProto.BOOL), _vi("h_out", [2, 3])]
    if scan:
        nodes += [N("Cast", ["i"], ["i_f"], to=D), N("Mul", ["h_out", "i_f"], ["scan"])]
        outs.append(_vi("scan", [2, 3]))
    body = helper.make_graph(nodes, "step", [_vi("i", [], TensorProto.INT64),
                                             _vi("c_in", [], TensorProto.BOOL),
                                             _vi("h_in", [2, 3])], outs)
    inits = [numpy_helper.from_array(np.array(1.0), "one")]
    inputs = [_vi("h0", [2, 3]), _vi("W", [3, 3]), _vi("b", [2, 3])]
    if trips is None:
        inputs.append(_vi("M", [], TensorProto.INT64))
    else:
        inits.append(numpy_helper.from_array(np.array(trips, np.int64), "M"))
    loop_outs = ["h_last", "scans"] if scan else ["h_last"]
    return _model([N("Loop", ["M", "c0" if cond else "", "h0"], loop_outs, body=body)],
                  inputs, loop_outs,
                  [*inits, numpy_helper.from_array(np.array(True), "c0")] if cond else inits)


def _feeds(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"h0": rng.standard_normal((2, 3)), "W": rng.standard_normal((3, 3)) * 0.6,
            "b": rng.standard_normal((2, 3)) * 0.3}


def _ort_check(m: onnx.ModelProto, feeds: dict[str, np.ndarray], rng: np.random.Generator,
               wrt: list[str] | None = None) -> float:
    return check_vjp(m, feeds, rng=rng, wrt=wrt, backend="onnxruntime").error


def _all_nodes(graph: onnx.GraphProto) -> int:
    return sum(1 + sum(_all_nodes(a.g) for a in n.attribute if a.type == a.GRAPH)
               for n in graph.node)


def _op_types(graph: onnx.GraphProto) -> set[str]:
    return {t for n in graph.node for t in [n.op_type, *(
        u for a in n.attribute if a.type == a.GRAPH for u in _op_types(a.g))]}


def test_a_long_static_loop_is_differentiated_as_a_loop(rng: np.random.Generator) -> None:
    m = _tanh_loop(500)
    assert _ort_check(m, _feeds(rng), rng) < 1e-7
    vm = vjp(m)
    # 500 copies of the 4-node body would be 2000 forward nodes and about 6000 more backward.
    assert [n.op_type for n in vm.graph.node].count("Loop") == 2
    assert _all_nodes(vm.graph) < 60, _all_nodes(vm.graph)


def test_a_trip_count_given_at_run_time(rng: np.random.Generator) -> None:
    m = _tanh_loop(None)
    for trips in (0, 1, 7):
        feeds = {**_feeds(rng), "M": np.array(trips, np.int64)}
        assert _ort_check(m, feeds, rng, wrt=["h0", "W", "b"]) < 1e-7, trips


def test_a_while_on_the_data(rng: np.random.Generator) -> None:
    m = _tanh_loop(40, cond="data")
    ran = set()
    for scale in (0.1, 0.5, 2.0):
        feeds = {"h0": np.full((2, 3), -1.0), "W": np.eye(3) * 0.9,
                 "b": np.full((2, 3), scale) + rng.standard_normal((2, 3)) * 0.01}
        # iterations until sum(h) > 1: more for a small b
        h, k = feeds["h0"], 0
        while k < 40:
            h, k = np.tanh(h @ feeds["W"] + feeds["b"]), k + 1
            if h.sum() >= 1:
                break
        ran.add(k)
        assert _ort_check(m, feeds, rng) < 1e-7, scale
    assert len(ran) == 3, ran  # three different iteration counts


@pytest.mark.parametrize("trips", [3, 300])
def test_scan_outputs(trips: int, rng: np.random.Generator,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unroll, "UNROLL_LIMIT", 0)
    assert _ort_check(_tanh_loop(trips, scan=True), _feeds(rng), rng) < 1e-7


def test_a_scan_output_of_a_runtime_count_is_refused(rng: np.random.Generator) -> None:
    with pytest.raises(UnsupportedOpError, match="a scan output's gradient needs a constant "
                                                 "number of iterations"):
        check_vjp(_tanh_loop(None, scan=True), {**_feeds(rng), "M": np.array(3)}, rng=rng,
                  wrt=["W"], backend="onnxruntime")


def test_only_outer_reads_need_a_gradient(rng: np.random.Generator,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The initial state is a constant: only W and b (read from the outer scope) get one."""
    monkeypatch.setattr(unroll, "UNROLL_LIMIT", 0)
    feeds = _feeds(rng)
    assert _ort_check(_tanh_loop(6), feeds, rng, wrt=["W", "b"]) < 1e-7
    assert _ort_check(_tanh_loop(6), feeds, rng, wrt=["h0"]) < 1e-7


def test_a_loop_inside_a_data_dependent_if(rng: np.random.Generator,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unroll, "UNROLL_LIMIT", 0)
    loop = _tanh_loop(5, scan=True).graph.node[0]
    then = helper.make_graph([loop, N("ReduceSum", ["scans", "ax0"], ["t_out"], keepdims=0),
                              N("Add", ["t_out", "h_last"], ["t_sum"])], "then", [],
                             [_vi("t_sum", [2, 3])])
    other = helper.make_graph([N("Sin", ["h0"], ["e_out"])], "else", [], [_vi("e_out", [2, 3])])
    nodes = [N("ReduceSum", ["h0"], ["s"], keepdims=0), N("Greater", ["s", "zero"], ["c"]),
             N("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    inits = [numpy_helper.from_array(np.array(5, np.int64), "M"),
             numpy_helper.from_array(np.array(0.0), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0")]
    m = _model(nodes, [_vi("h0", [2, 3]), _vi("W", [3, 3]), _vi("b", [2, 3])], ["y"], inits)
    for sign in (1.0, -1.0):
        feeds = _feeds(rng)
        feeds["h0"] = sign * np.abs(feeds["h0"])
        assert _ort_check(m, feeds, rng) < 1e-7, sign


def _scan(in_axis: int, in_dir: int, out_axis: int, out_dir: int) -> onnx.ModelProto:
    """h_t = tanh(x_t Wx + h_{t-1} Wh), y_t = h_t * x_t over x [2, 4, 3] (time on in_axis)."""
    body = helper.make_graph([
        N("MatMul", ["x_t", "Wx"], ["xw"]), N("MatMul", ["h_in", "Wh"], ["hw"]),
        N("Add", ["xw", "hw"], ["pre"]), N("Tanh", ["pre"], ["h_out"]),
        N("Mul", ["h_out", "x_t"], ["y_t"]),
    ], "cell", [_vi("h_in", [2, 3]), _vi("x_t", [2, 3])], [_vi("h_out", [2, 3]),
                                                           _vi("y_t", [2, 3])])
    nodes = [N("Scan", ["h0", "x"], ["h_last", "ys"], body=body, num_scan_inputs=1,
               scan_input_axes=[in_axis], scan_input_directions=[in_dir],
               scan_output_axes=[out_axis], scan_output_directions=[out_dir])]
    xs = [2, 3]
    xs.insert(in_axis, 4)
    inputs = [_vi("h0", [2, 3]), _vi("x", xs), _vi("Wx", [3, 3]), _vi("Wh", [3, 3])]
    return _model(nodes, inputs, ["h_last", "ys"], [])


SCANS = [(0, 0, 0, 0), (1, 1, 1, 0), (0, 1, 0, 1), (1, 0, 1, 1), (1, 0, -1, 0)]


@pytest.mark.parametrize("axes", SCANS, ids=[f"in{a}d{b}_out{c}d{d}" for a, b, c, d in SCANS])
def test_a_scan_as_a_loop(axes: tuple[int, int, int, int], rng: np.random.Generator,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unroll, "UNROLL_LIMIT", 0)
    m = _scan(*axes)
    feeds = {"h0": rng.standard_normal((2, 3)),
             "x": rng.standard_normal([d.dim_value for d in
                                       m.graph.input[1].type.tensor_type.shape.dim]),
             "Wx": rng.standard_normal((3, 3)) * 0.6, "Wh": rng.standard_normal((3, 3)) * 0.6}
    vm = vjp(m)
    assert "Scan" not in {n.op_type for n in vm.graph.node}
    # x's gradient leaves the backward Loop one element per iteration (a scan output), not
    # as a full-size scatter summed every iteration.
    inside = {t for n in vm.graph.node for a in n.attribute if a.type == a.GRAPH
              for t in _op_types(a.g)}
    assert not {t for t in inside if t.startswith("Scatter")}
    assert _ort_check(m, feeds, rng) < 1e-7


def test_a_carried_value_that_grows_is_refused(rng: np.random.Generator) -> None:
    body = helper.make_graph([N("Identity", ["c_in"], ["c_out"]),
                              N("Concat", ["v_in", "x"], ["v_out"], axis=0)], "grow",
                             [_vi("i", [], TensorProto.INT64), _vi("c_in", [], TensorProto.BOOL),
                              _vi("v_in", None)],
                             [_vi("c_out", [], TensorProto.BOOL), _vi("v_out", None)])
    m = _model([N("Loop", ["M", "", "x"], ["v"], body=body)], [_vi("x", [1, 3])], ["v"],
               [numpy_helper.from_array(np.array(2000, np.int64), "M")])
    with pytest.raises(UnsupportedOpError, match="changes shape between iterations"):
        check_vjp(m, {"x": rng.standard_normal((1, 3))}, rng=rng, backend="onnxruntime")


@pytest.mark.torch
@pytest.mark.slow
def test_a_scripted_for_and_while_match_torch_autograd(
        tmp_path: Path, matches_torch: Callable[..., None]) -> None:
    """torch.jit.script: a 600-step `for` (exported as a Loop whose body torch unrolls 8 times)
    and a `while` whose condition reads the hidden state; neither is unrolled here."""
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    from torch import nn

    from neuromask_onnx import instrument

    class WhileNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.rec, self.out = nn.Linear(6, 5), nn.Linear(5, 5), nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            u = self.inp(x)
            h = torch.tanh(u)
            for _ in range(600):
                h = torch.tanh(self.rec(h) + u)
            k = 0
            while bool(h.abs().sum() < 20.0) and k < 50:
                h = h * 1.1 + 0.01 * u
                k += 1
            return self.out(h)

    torch.manual_seed(0)
    path = tmp_path / "while.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = torch.jit.script(WhileNet().eval())
        torch.onnx.export(net, (torch.randn(2, 6),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    model = instrument(str(path), batch_size=2)
    assert [n.op_type for n in model.graph.node].count("Loop") >= 4
    assert len(model.graph.node) < 300, len(model.graph.node)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for scale in (1.0, 0.2):  # the while runs a different number of times
        x = (rng.standard_normal((2, 6)) * scale).astype(np.float32)
        mask = rng.uniform(0.5, 1.0, (2, 6)).astype(np.float32)
        matches_torch(sess, net, x, mask, np.array([0, 2], np.int64))


def test_a_loop_inside_a_loop(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The outer body holds the tanh loop (4 steps) then h = h * x: the inner Loop is
    differentiated inside the outer backward body, from its own saved states."""
    monkeypatch.setattr(unroll, "UNROLL_LIMIT", 0)
    inner = _tanh_loop(4).graph
    loop = inner.node[0]
    del loop.input[:]
    loop.input.extend(["M", "", "g_in"])
    del loop.output[:]
    loop.output.append("g_mid")
    body = helper.make_graph([loop, N("Mul", ["g_mid", "x"], ["g_out"]),
                              N("Identity", ["c_in"], ["c_out"])], "outer",
                             [_vi("j", [], TensorProto.INT64), _vi("c_in", [], TensorProto.BOOL),
                              _vi("g_in", [2, 3])],
                             [_vi("c_out", [], TensorProto.BOOL), _vi("g_out", [2, 3])])
    m = _model([N("Loop", ["K", "", "h0"], ["y"], body=body)],
               [_vi("h0", [2, 3]), _vi("W", [3, 3]), _vi("b", [2, 3]), _vi("x", [2, 3])], ["y"],
               [numpy_helper.from_array(np.array(4, np.int64), "M"),
                numpy_helper.from_array(np.array(3, np.int64), "K")])
    feeds = {**_feeds(rng), "x": rng.uniform(0.5, 1.5, (2, 3))}
    assert _ort_check(m, feeds, rng) < 1e-7


@pytest.mark.parametrize("axes", [(0, 0, 0, 0), (1, 1, 1, 1)], ids=["forward", "reverse_axis1"])
def test_a_scan_inside_a_data_dependent_if(axes: tuple[int, int, int, int],
                                           rng: np.random.Generator) -> None:
    """The branch's Scan becomes a Loop (`prepare` never unrolls what a branch holds)."""
    scan = _scan(*axes)
    then = helper.make_graph([scan.graph.node[0], N("ReduceSum", ["ys", "ax"], ["t_ys"],
                                                    keepdims=0),
                              N("Add", ["t_ys", "h_last"], ["t_out"])], "then", [],
                             [_vi("t_out", [2, 3])])
    other = helper.make_graph([N("Sin", ["h0"], ["e_out"])], "else", [], [_vi("e_out", [2, 3])])
    nodes = [N("ReduceSum", ["h0"], ["s"], keepdims=0), N("Greater", ["s", "zero"], ["c"]),
             N("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    inits = [numpy_helper.from_array(np.array(0.0), "zero"),
             numpy_helper.from_array(np.array([axes[2]], np.int64), "ax")]
    m = _model(nodes, list(scan.graph.input), ["y"], inits)
    x = rng.standard_normal([d.dim_value for d in scan.graph.input[1].type.tensor_type.shape.dim])
    for sign in (1.0, -1.0):
        feeds = {"h0": sign * np.abs(rng.standard_normal((2, 3))), "x": x,
                 "Wx": rng.standard_normal((3, 3)) * 0.6, "Wh": rng.standard_normal((3, 3)) * 0.6}
        assert _ort_check(m, feeds, rng) < 1e-7, sign
