"""CLI tests for the engine commands: `neuromask instrument`, `neuromask ops`, `--version`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from neuromask_onnx import __version__
from neuromask_onnx.cli import app

runner = CliRunner()


def _tiny_cnn(path: Path, *, extra_op: str | None = None, int_input: bool = False,
              batch: int | str = "N") -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, NCHW 3x8x8, 4 classes."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((5, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node(extra_op or "Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    if extra_op:
        nodes[1].domain = "com.example"
    if int_input:  # a valid model whose only input is int64 (cast before the Conv)
        nodes.insert(0, helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT))
        nodes[1].input[0] = "xf"
    xt = TensorProto.INT64 if int_input else TensorProto.FLOAT
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", xt, [batch, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])],
                          [w, fc])
    opsets = [helper.make_opsetid("", 17)]
    if extra_op:
        opsets.append(helper.make_opsetid("com.example", 1))
    m = helper.make_model(g, opset_imports=opsets)
    m.ir_version = 8
    onnx.save(m, path)
    return path


def _one_line_error(result, text: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert text in lines[0]
    assert "Traceback" not in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_instrument_writes_a_model_onnxruntime_runs(tmp_path: Path) -> None:
    model = _tiny_cnn(tmp_path / "m.onnx")
    out = tmp_path / "inst.onnx"
    result = runner.invoke(app, ["instrument", str(model), "-o", str(out), "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "layout NCHW" in result.stdout
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x", "nm_mask", "nm_target"]
    assert [o.name for o in sess.get_outputs()] == ["nm_loss", "nm_grad_mask", "nm_probs"]
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    loss, grad, probs = sess.run(None, {"x": x, "nm_mask": np.ones((2, 1, 8, 8), np.float32),
                                        "nm_target": np.array([0, 3])})
    assert loss.shape == (2,)
    assert grad.shape == (2, 1, 8, 8)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(loss, -np.log(probs[[0, 1], [0, 3]]), rtol=1e-4)


def test_instrument_refuses_to_overwrite(tmp_path: Path) -> None:
    model = _tiny_cnn(tmp_path / "m.onnx")
    out = tmp_path / "inst.onnx"
    out.write_bytes(b"precious")
    result = runner.invoke(app, ["instrument", str(model), "-o", str(out)])
    _one_line_error(result, "--force")
    assert out.read_bytes() == b"precious"
    result = runner.invoke(app, ["instrument", str(model), "-o", str(out), "--force"])
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(out))


@pytest.mark.parametrize(
    ("make", "args", "text"),
    [
        (None, [], "does not exist"),
        ("garbage", [], "not a readable ONNX model"),
        ("unsupported", [], "com.example::Swish"),
        ("int", [], "no float input"),
        ("ok", ["--input", "nope"], "has no input 'nope'"),
        ("ok", ["--layout", "NCHWX"], "--layout"),
        ("ok", ["--input-shape", "3,a"], "--input-shape"),
        ("fixed", ["--batch-size", "4"], "fixed batch size of 1"),
    ],
)
def test_instrument_errors_are_one_line_and_write_nothing(
    tmp_path: Path, make: str | None, args: list[str], text: str
) -> None:
    model = tmp_path / "m.onnx"
    if make == "garbage":
        model.write_bytes(b"\x00 not onnx at all")
    elif make == "unsupported":
        _tiny_cnn(model, extra_op="Swish")
    elif make == "int":
        _tiny_cnn(model, int_input=True)
    elif make == "ok":
        _tiny_cnn(model)
    elif make == "fixed":
        _tiny_cnn(model, batch=1)
    out = tmp_path / "out.onnx"
    result = runner.invoke(app, ["instrument", str(model), "-o", str(out), *args])
    _one_line_error(result, text)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["m.onnx"] if make else [])


def test_instrument_onto_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    model = _tiny_cnn(tmp_path / "m.onnx")
    (tmp_path / "d").mkdir()
    result = runner.invoke(app, ["instrument", str(model), "-o", str(tmp_path / "d"), "--force"])
    _one_line_error(result, "is a directory")
    assert list((tmp_path / "d").iterdir()) == []


def test_ops_lists_supported_ops() -> None:
    result = runner.invoke(app, ["ops"])
    assert result.exit_code == 0
    for op in ("Conv", "MaxPool", "Softmax", "Resize", "Einsum"):
        assert f" {op} " in f" {result.stdout} "


def test_ops_on_a_model_names_the_unsupported_op_on_the_path(tmp_path: Path) -> None:
    ok = runner.invoke(app, ["ops", str(_tiny_cnn(tmp_path / "a.onnx"))])
    assert ok.exit_code == 0
    assert "every op on the gradient path is supported" in ok.stdout
    bad = runner.invoke(app, ["ops", str(_tiny_cnn(tmp_path / "b.onnx", extra_op="Swish"))])
    assert bad.exit_code == 0
    assert "unsupported on the gradient path: com.example::Swish" in bad.stdout


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["explain", "{model}", "x.png", "--steps", "abc"], "Invalid value for '--steps'"),
        (["instrument", "{model}"], "Missing option"),
        (["explain"], "Missing argument"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_1(tmp_path: Path, args: list[str],
                                                    text: str) -> None:
    """The installed entry point turns Click's usage errors into our one-line form."""
    import subprocess
    import sys

    model = _tiny_cnn(tmp_path / "m.onnx")
    argv = [a.replace("{model}", str(model)) for a in args]
    done = subprocess.run([sys.executable, "-m", "neuromask_onnx", *argv], cwd=tmp_path,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert text in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
