"""Control flow: constant Ifs inlined, short static Loops and Scans unrolled, subgraphs searched.

The data-dependent If's rule is in the rule table (tests/test_vjp_rules.py); the fixtures
models/cf_*.onnx go through every end-to-end check of tests/test_fixtures.py. Here: the
unrolling of every Loop/Scan attribute variant by the dot-product test in float64 on the
reference evaluator, what `prepare` leaves of each fixture, and the errors and `ops` rows
that name an unsupported op inside a subgraph by its path.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from neuromask_onnx import instrument, oracle, unroll
from neuromask_onnx.cli import app
from neuromask_onnx.errors import UnsupportedOpError
from neuromask_onnx.gradcheck import check_vjp
from neuromask_onnx.graph import prepare
from neuromask_onnx.rewrite import op_report

D = TensorProto.DOUBLE
N = helper.make_node
MODELS = Path(__file__).resolve().parents[1] / "models"


def _load_tool(name: str) -> Any:
    path = MODELS.parent / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"nm_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MAKE = _load_tool("make_control_flow_models")


def test_committed_fixtures_are_what_the_generator_writes() -> None:
    for name, build in MAKE.MODELS.items():
        assert build().SerializeToString(deterministic=True) == (
            MODELS / f"{name}.onnx").read_bytes(), name


@pytest.mark.parametrize(("name", "gone", "kept"), [
    ("cf_if_const_lstm", "If", "LSTM"),
    ("cf_loop_static", "Loop", "Tanh"),
    ("cf_scan_rnn", "Scan", "Tanh"),
    ("cf_if_data", "", "If"),
])
def test_prepare_inlines_what_is_static(name: str, gone: str, kept: str) -> None:
    m = onnx.load(str(MODELS / f"{name}.onnx"))
    x = m.graph.input[0]
    dims = [d.dim_value or 2 for d in x.type.tensor_type.shape.dim]
    ops = [n.op_type for n in prepare(m, {x.name: tuple(dims)}).nodes]
    assert kept in ops
    if gone:
        assert gone not in ops


# --------------------------------------------------------------------------- unrolled bodies


def _vi(name: str, shape: list[int] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, D, shape)


def _scan_model(in_axis: int, in_dir: int, out_axis: int, out_dir: int) -> onnx.ModelProto:
    """h_t = tanh(x_t Wx + h_{t-1} Wh) over x [2, 4, 3] (time on in_axis); Wx read outside."""
    rng = np.random.default_rng(5)
    body = helper.make_graph([
        N("MatMul", ["x_t", "Wx"], ["xw"]), N("MatMul", ["h_in", "Wh"], ["hw"]),
        N("Add", ["xw", "hw"], ["pre"]), N("Tanh", ["pre"], ["h_out"]),
        N("Mul", ["h_out", "x_t0"], ["y_t"]),
    ], "cell", [_vi("h_in", [2, 3]), _vi("x_t", [2, 3])],
        [_vi("h_out", [2, 3]), _vi("y_t", [2, 3])])
    body.node.insert(0, N("Slice", ["x_t", "s0", "s1", "s1"], ["x_t0"]))
    nodes = [N("Scan", ["h0", "x"], ["h_last", "ys"], body=body, num_scan_inputs=1,
               scan_input_axes=[in_axis], scan_input_directions=[in_dir],
               scan_output_axes=[out_axis], scan_output_directions=[out_dir])]
    xs = [2, 3]
    xs.insert(in_axis, 4)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 3)) * 0.6, "Wx"),
             numpy_helper.from_array(rng.standard_normal((3, 3)) * 0.6, "Wh"),
             numpy_helper.from_array(np.array([0], np.int64), "s0"),
             numpy_helper.from_array(np.array([1], np.int64), "s1")]
    g = helper.make_graph(nodes, "scan", [_vi("h0", [2, 3]), _vi("x", xs)],
                          [_vi("h_last", None), _vi("ys", None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    return m


def _loop_model(trips: int) -> onnx.ModelProto:
    """A Loop carrying h and emitting h * iter; its body reads x from the outer scope."""
    rng = np.random.default_rng(6)
    body = helper.make_graph([
        N("Identity", ["c_in"], ["c_out"]),
        N("MatMul", ["h_in", "W"], ["hw"]), N("Add", ["hw", "x"], ["pre"]),
        N("Sin", ["pre"], ["h_out"]),
        N("Cast", ["i"], ["i_f"], to=D), N("Mul", ["h_out", "i_f"], ["scan"]),
    ], "step", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("c_in", TensorProto.BOOL, []), _vi("h_in", [2, 3])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), _vi("h_out", [2, 3]),
         _vi("scan", [2, 3])])
    nodes = [N("Loop", ["M", "", "h0"], ["h_last", "scans"], body=body)]
    inits = [numpy_helper.from_array(rng.standard_normal((3, 3)) * 0.6, "W"),
             numpy_helper.from_array(np.array(trips, np.int64), "M")]
    g = helper.make_graph(nodes, "loop", [_vi("h0", [2, 3]), _vi("x", [2, 3])],
                          [_vi("h_last", None), _vi("scans", None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    return m


SCANS = [(0, 0, 0, 0), (1, 1, 1, 0), (0, 1, 0, 1), (1, 0, 1, 1), (1, 0, -1, 0)]


@pytest.mark.parametrize("axes", SCANS, ids=[f"in{a}d{b}_out{c}d{d}" for a, b, c, d in SCANS])
def test_scan_gradient(axes: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    m = _scan_model(*axes)
    xs = [d.dim_value for d in m.graph.input[1].type.tensor_type.shape.dim]
    feeds = {"h0": rng.standard_normal((2, 3)), "x": rng.standard_normal(xs)}
    # onnx's reference Scan knows axis 0, forward only; onnxruntime runs every variant in
    # float64.
    backend = "reference" if axes == (0, 0, 0, 0) else "onnxruntime"
    if any(map(oracle.reference_fault, m.graph.node)):  # an older onnx's reference evaluator
        backend = "onnxruntime"
    r = check_vjp(m, feeds, rng=rng, backend=backend)
    assert r.error < 1e-7, r


@pytest.mark.parametrize("trips", [1, 4])
@pytest.mark.parametrize("unrolled", [True, False])
def test_loop_gradient(trips: int, unrolled: bool, rng: np.random.Generator,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    if not unrolled:  # the Loop rule (vjp_rules/loop.py) instead
        monkeypatch.setattr(unroll, "UNROLL_LIMIT", 0)
    feeds = {"h0": rng.standard_normal((2, 3)), "x": rng.standard_normal((2, 3))}
    # onnx's reference Loop cannot stack this body's scan output; onnxruntime, in float64.
    r = check_vjp(_loop_model(trips), feeds, rng=rng, backend="onnxruntime")
    assert r.error < 1e-7, r


# --------------------------------------------------------------------------- refusals, paths


def _if_data_with(op_type: str) -> onnx.ModelProto:
    """cf_if_data with the then-branch's Tanh replaced by `op_type` (an op with no rule)."""
    m = onnx.load(str(MODELS / "cf_if_data.onnx"))
    branch = next(a.g for a in m.graph.node[-1].attribute if a.name == "then_branch")
    branch.node[0].op_type = op_type
    return m


def test_unsupported_op_inside_a_branch_is_named_with_its_path() -> None:
    m = _if_data_with("Trilu")
    with pytest.raises(UnsupportedOpError, match=r"at If 'sign_if' / then_branch / "
                                                 r"Trilu 'then_tanh'"):
        instrument(m, batch_size=2)
    row = next(r for r in op_report(m) if r.op_type == "Trilu")
    assert row.status == "unsupported"
    assert row.on_path == 1
    assert row.where == ("If 'sign_if' / then_branch / Trilu 'then_tanh'",)


def test_ops_cli_names_the_subgraph_path(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_if_data_with("Trilu"), str(path))
    result = CliRunner().invoke(app, ["ops", str(path)])
    assert "unsupported on the gradient path: Trilu (at If 'sign_if' / then_branch / " \
           "Trilu 'then_tanh')" in result.output
    assert "every op on the gradient path is supported" not in result.output


def test_a_scan_output_of_a_loop_of_unknown_length_is_refused_with_the_reason() -> None:
    """The carried value's gradient would be fine (tests/test_loop_vjp.py); the scan output's
    length is not static."""
    m = _loop_model(3)
    m.graph.initializer.pop()  # M becomes a graph input: not known after folding
    m.graph.input.append(helper.make_tensor_value_info("M", TensorProto.INT64, []))
    with pytest.raises(UnsupportedOpError, match="a scan output's gradient needs a constant "
                                                 "number of iterations"):
        check_vjp(m, {"h0": np.zeros((2, 3)), "x": np.zeros((2, 3)), "M": np.array(3)},
                  rng=np.random.default_rng(0), wrt=["x"])


# --------------------------------------------------------------------------- torch.jit.script


@pytest.mark.torch
@pytest.mark.parametrize("loop", ["unrolled", "reverse_loop"])
def test_scripted_control_flow_matches_torch_autograd_on_both_branches(
        tmp_path: Path, loop: str, monkeypatch: pytest.MonkeyPatch,
        matches_torch: Callable[..., None]) -> None:
    """A torch.jit.script net: Loop (trip count from the input's shape) and an If on data.

    Its 3 iterations are unrolled by default; with no unrolling the Loop rule differentiates it.
    """
    if loop == "reverse_loop":
        monkeypatch.setattr(unroll, "UNROLL_LIMIT", 0)
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    exp = _load_tool("export_scripted")
    net = exp.build()
    path = exp.export(tmp_path / "scripted.onnx", net=net)
    assert {"Loop", "If"} <= {n.op_type for n in onnx.load(str(path)).graph.node}
    model = instrument(str(path), batch_size=2)
    assert ("Loop" in {n.op_type for n in model.graph.node}) == (loop == "reverse_loop")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        x = rng.standard_normal((2, exp.FEATURES)).astype(np.float32)
        mask = rng.uniform(0.5, 1.0, (2, exp.FEATURES)).astype(np.float32)
        target = np.array([0, 2], np.int64)
        with torch.no_grad():
            xm = torch.tensor(x * mask)
            h, u = torch.tanh(net.inp(xm)), net.inp(xm)
            for _ in range(exp.FEATURES // 2):
                h = torch.tanh(net.rec(h) + u)
        branch = bool(h.sum() > 0)
        if branch in seen:
            continue
        seen.add(branch)
        matches_torch(sess, net, x, mask, target)
    assert seen == {True, False}
