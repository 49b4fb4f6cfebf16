"""`neuromask explain` through Typer's runner: files, JSON, overwrite refusal, error paths."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image
from typer.testing import CliRunner

from neuromask_onnx.cli import app
from neuromask_onnx.optimize import NeuroMaskConfig

MODEL = Path(__file__).resolve().parent.parent / "models" / "region_cnn.onnx"
FAST = ["--quiet", "--preset", "reference-cifar", "--steps", "5", "--preprocess", "raw",
        "--scale", "0.00392"]
runner = CliRunner()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray((rng.uniform(0.5, 1.0, (40, 60, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _run(*args: str | Path):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["explain", *map(str, args)])


def _one_line_error(result, out: Path) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert not out.exists() or not any(out.iterdir())
    return lines[0]


def test_files_and_json(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    npy = tmp_path / "t.npy"
    np.save(npy, np.random.default_rng(1).uniform(0.5, 1, (3, 32, 32)).astype(np.float32))
    result = _run(MODEL, image, npy, "-o", out, *FAST, "--seed", "4", "--mask-scale", "2")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["photo.json", "photo.mask.npy", "photo.mask.png", "photo.overlay.png",
                     "t.json", "t.mask.npy", "t.mask.png"]
    mask = np.load(out / "photo.mask.npy")
    assert (mask.shape, mask.dtype) == ((32, 32), np.float32)
    with Image.open(out / "photo.overlay.png") as ov:
        assert ov.size == (60, 40)  # the original image's resolution
    with Image.open(out / "photo.mask.png") as grey:
        assert (grey.mode, grey.size) == ("L", (32, 32))
    doc = json.loads((out / "photo.json").read_text())
    assert doc["model"]["sha256"] == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert doc["target"] == {"index": 0, "label": None}
    assert doc["config"]["steps"] == 5
    assert doc["config"]["mask_scale"] == 2
    assert doc["seed"] == doc["config"]["seed"] == 4
    assert doc["steps"] == 5
    assert len(doc["losses"]) == 5
    assert doc["provider"] == "CPUExecutionProvider"
    assert doc["onnxruntime"]
    assert doc["top5"][0]["index"] == 0
    assert 0 <= doc["prob_after"] <= 1
    assert doc["prob_before"] > 0.9
    assert doc["input"]["kind"] == "image"
    assert doc["input"]["original_size"] == [40, 60]
    assert doc["seconds"]["optimize"] > 0
    assert set(doc["final_losses"]) == {"total", "pred", "sparse", "smooth"}


def test_labels_top_k_and_summary(image: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("box\ndark\nother\n")
    out = tmp_path / "out"
    args = [a for a in FAST if a != "--quiet"]
    result = _run(MODEL, image, "-o", out, *args, "--labels", labels, "--target", "dark",
                  "--target", "box")
    assert result.exit_code == 0, result.output
    assert "NeuroMask" in result.stdout  # the summary table
    assert (out / "photo.class1.json").exists()
    assert (out / "photo.class0.json").exists()
    assert json.loads((out / "photo.class1.json").read_text())["target"]["label"] == "dark"
    out2 = tmp_path / "out2"
    assert _run(MODEL, image, "-o", out2, *FAST, "--top-k", "2").exit_code == 0
    assert len(list(out2.glob("*.json"))) == 2


def test_overwrite_is_refused_without_force(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run(MODEL, image, "-o", out, *FAST).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = _run(MODEL, image, "-o", out, *FAST, "--seed", "9")
    assert result.exit_code == 1
    assert "--force" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    result = _run(MODEL, image, "-o", out, *FAST, "--seed", "9", "--force")
    assert result.exit_code == 0, result.output
    assert (out / "photo.mask.npy").read_bytes() != before["photo.mask.npy"]
    assert not list(out.glob(".*tmp"))  # no temp files left behind


def test_one_existing_file_blocks_every_write(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo.json").write_text("{}")
    result = _run(MODEL, image, "-o", out, *FAST)
    assert result.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["photo.json"]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def test_error_paths(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    msg = _one_line_error(_run(MODEL, tmp_path / "nope.png", "-o", out, *FAST), out)
    assert "does not exist" in msg
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    assert "cannot read image" in _one_line_error(_run(MODEL, bad, "-o", out, *FAST), out)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 16, 16), np.float32))
    assert "shape" in _one_line_error(_run(MODEL, wrong, "-o", out, *FAST), out)
    labels = tmp_path / "labels.txt"
    labels.write_text("box\ndark\nother\n")
    msg = _one_line_error(_run(MODEL, image, "-o", out, *FAST, "--labels", labels,
                               "--target", "giraffe"), out)
    assert "unknown label 'giraffe'" in msg
    msg = _one_line_error(_run(tmp_path / "missing.onnx", image, "-o", out, *FAST), out)
    assert "does not exist" in msg

    # a model with two inputs and no --input
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 32, 32])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])
    two = helper.make_model(helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])],
                                              "two", [a, b], [y]))
    msg = _one_line_error(_run(_save(two, tmp_path / "two.onnx"), image, "-o", out, *FAST), out)
    assert "--input" in msg
    # a non-float input
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 8])
    yi = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    cast = helper.make_model(helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT)], "ids", [ids], [yi]))
    msg = _one_line_error(_run(_save(cast, tmp_path / "ids.onnx"), image, "-o", out, *FAST), out)
    assert "not float" in msg


def test_bad_flag_values_are_one_line(image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for flags, text in ((["--baseline", "purple"], "baseline"),
                        (["--laplacian-size", "4"], "laplacian_size"),
                        (["--preset", "nope"], "unknown preset"),
                        (["--provider", "tpu"], "--provider"),
                        (["--mean", "a,b"], "--mean"),
                        (["--size", "3"], "--size")):
        assert text in _one_line_error(_run(MODEL, image, "-o", out, *FAST, *flags), out)


def test_config_flags_map_one_to_one() -> None:
    import typer.main

    cmd = typer.main.get_command(app).commands["explain"]  # type: ignore[attr-defined]
    params = {p.name for p in cmd.params}
    fields = {f.name for f in dataclasses.fields(NeuroMaskConfig)}
    assert fields <= params
    for f in fields:
        opt = next(p for p in cmd.params if p.name == f)
        assert f"--{f.replace('_', '-')}" in opt.opts


def test_score_puts_both_protocols_in_the_json(image: Path, tmp_path: Path) -> None:
    """`--score`: the map's own deletion / insertion AUCs under protocols A and B."""
    out = tmp_path / "out"
    result = _run(MODEL, image, "-o", out, "--preprocess", "raw", "--steps", "3", "--score")
    assert result.exit_code == 0, result.output
    doc = json.loads(next(out.glob("*.json")).read_text())
    scores = doc["scores"]
    for proto in ("A", "B"):
        d, i = scores[f"{proto}_deletion_auc"], scores[f"{proto}_insertion_auc"]
        assert 0.0 <= d <= 1.0
        assert 0.0 <= i <= 1.0
        assert scores[f"{proto}_insertion_minus_deletion"] == pytest.approx(i - d)
    assert scores["A_deletion_auc"] != scores["B_deletion_auc"]  # different substrates
    assert doc["model_passes"] == 3 * 8  # 3 steps of 4 areas x (kept, deleted)
