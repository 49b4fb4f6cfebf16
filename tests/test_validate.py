"""A broken input model is refused on load in one line naming the broken node or tensor."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from neuromask_onnx import instrument, oracle
from neuromask_onnx.cli import app
from neuromask_onnx.errors import InputError
from neuromask_onnx.graph import load_model

MODELS = Path(__file__).resolve().parents[1] / "models"


def _cnn() -> onnx.ModelProto:
    return onnx.load(str(MODELS / "cnn_nchw.onnx"))


def test_a_node_the_checker_rejects_is_named() -> None:
    m = _cnn()
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    del conv.input[1:]
    with pytest.raises(InputError, match=rf"node {conv.name!r} \(Conv\): .*input size 1"):
        load_model(m)


def test_an_undecodable_initializer_is_named() -> None:
    m = _cnn()
    t = m.graph.initializer[0]
    t.raw_data = t.raw_data[:-8]
    with pytest.raises(InputError, match=rf"initializer {t.name!r} cannot be decoded"):
        instrument(m)


def test_a_model_onnxruntime_runs_is_accepted_despite_stale_value_info() -> None:
    """Strict inference disputes a wrong declared output shape; onnxruntime runs it."""
    m = _cnn()
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 7  # really 10
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.checker.check_model(m, full_check=True)
    assert instrument(m, batch_size=1).graph.output


def test_ops_never_reports_full_support_for_a_broken_model(tmp_path: Path) -> None:
    m = _cnn()
    m.graph.node[2].op_type = "Relux"
    path = tmp_path / "broken.onnx"
    onnx.save(m, str(path))
    res = CliRunner().invoke(app, ["ops", str(path)])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [(
        f"error: {str(path)!r} is not a valid ONNX model: node 'Relu_2' (Relux): No Op "
        "registered for Relux with domain_version of 17; re-export the model, or check it "
        "with onnx.checker.check_model")]


def test_onnxruntime_s_reason_is_given_where_the_checker_names_no_node() -> None:
    """Float Mod with fmod=0 before opset 28: the checker only disputes the shapeless output
    (as it does for models onnxruntime runs), onnxruntime's refusal is the reason shown."""
    from onnx import TensorProto, helper

    vi = helper.make_tensor_value_info
    g = helper.make_graph([helper.make_node("Mod", ["a", "b"], ["y"], fmod=0)], "mod",
                          [vi("a", TensorProto.FLOAT, [3]), vi("b", TensorProto.FLOAT, [3])],
                          [vi("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    with pytest.raises(InputError, match=r"onnxruntime refuses it \(.*Mod.*fmod attribute must "
                                         r"be true for floating point types( before opset 28)?\);"):
        load_model(m)
    m.opset_import[0].version = 28  # float floor-mod is in the spec there
    m.ir_version = 11
    why = oracle.unrunnable(m)  # an onnxruntime before opset 28 (the lowest-versions job)
    if why:
        pytest.skip(why)
    assert load_model(m).graph.node[0].op_type == "Mod"
