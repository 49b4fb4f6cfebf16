"""Models that leave non-batch dims dynamic take them from the input, once per shape.

The model is models/cnn_nchw.onnx with H and W made dynamic (as paddle2onnx writes
`[-1, 3, ?, ?]`). `explain`, `compare` and `evaluate` read the size from each .npy (or from
--size for images) and instrument one model per distinct input shape; `instrument` still
needs --input-shape.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from typer.testing import CliRunner

from neuromask_onnx import NeuroMask
from neuromask_onnx.baselines import Classifier
from neuromask_onnx.cli import app
from neuromask_onnx.errors import ConvergenceWarning
from neuromask_onnx.optimize import NeuroMaskConfig

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture
def dynamic_model(tmp_path: Path) -> Path:
    m = onnx.load(str(MODELS / "cnn_nchw.onnx"))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    path = tmp_path / "dynamic.onnx"
    onnx.save(m, str(path))
    return path


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def test_one_instrumented_model_per_input_shape(dynamic_model: Path) -> None:
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(s).astype(np.float32)
          for s in [(3, 40, 48), (3, 36, 36), (3, 40, 48)]]
    nm = NeuroMask(str(dynamic_model), NeuroMaskConfig(steps=3), batch_size=4,
                   input_shape=xs[0].shape)
    sess = ort.InferenceSession(str(dynamic_model), providers=["CPUExecutionProvider"])
    want = np.concatenate([_softmax(sess.run(None, {"input": x[None]})[0]) for x in xs])
    np.testing.assert_allclose(nm.predict(xs), want, rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():  # 3 steps do not converge; only the shapes matter here
        warnings.simplefilter("ignore", ConvergenceWarning)
        out = nm.explain_many(xs, [None, None, 3])
    assert [row[0].mask.shape for row in out] == [(40, 48), (36, 36), (40, 48)]
    assert out[2][0].target == 3
    assert {shape for _, shape in nm._runners} == {(3, 40, 48), (3, 36, 36)}
    clf = Classifier(str(dynamic_model), input_shape=xs[1].shape)
    np.testing.assert_allclose(clf.probs(xs), want, rtol=1e-5, atol=1e-6)


def test_cli_takes_the_shape_from_each_npy(dynamic_model: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, rng.standard_normal((3, 40, 48)).astype(np.float32))
    np.save(b, rng.standard_normal((2, 3, 36, 36)).astype(np.float32))
    runner = CliRunner()
    res = runner.invoke(app, ["explain", str(dynamic_model), str(a), str(b), "-o",
                              str(tmp_path / "out"), "--steps", "3", "-q"])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "out" / "a.mask.npy").shape == (40, 48)
    assert np.load(tmp_path / "out" / "b-1.mask.npy").shape == (36, 36)
    res = runner.invoke(app, ["compare", str(dynamic_model), str(a), str(b), "-o",
                              str(tmp_path / "cmp"), "--methods", "saliency", "--curve-steps",
                              "4"])
    assert res.exit_code == 0, res.output
    sal = tmp_path / "sal.npy"
    np.save(sal, rng.random((40, 48)))
    res = runner.invoke(app, ["evaluate", str(dynamic_model), str(a), str(sal),
                              "--curve-steps", "4", "--json"])
    assert res.exit_code == 0, res.output


def test_images_take_the_size_flag(dynamic_model: Path, tmp_path: Path) -> None:
    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (50, 60, 3), np.uint8)).save(img)
    runner = CliRunner()
    res = runner.invoke(app, ["explain", str(dynamic_model), str(img), "-o",
                              str(tmp_path / "out"), "--steps", "3", "-q", "--size", "32,40"])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "out" / "photo.mask.npy").shape == (32, 40)
    sal = tmp_path / "sal.npy"
    np.save(sal, np.random.default_rng(3).random((32, 40)))
    res = runner.invoke(app, ["evaluate", str(dynamic_model), str(img), str(sal),
                              "--curve-steps", "4", "--size", "32,40"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", str(dynamic_model), str(img), str(sal)])
    assert res.exit_code == 1
    assert "--size" in res.output


def test_instrument_still_needs_the_input_shape(dynamic_model: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "inst.onnx"
    res = runner.invoke(app, ["instrument", str(dynamic_model), "-o", str(out)])
    assert res.exit_code == 1
    assert "--input-shape" in res.output
    assert not out.exists()
    res = runner.invoke(app, ["instrument", str(dynamic_model), "-o", str(out),
                              "--input-shape", "3,40,48"])
    assert res.exit_code == 0, res.output
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 40, 48]
