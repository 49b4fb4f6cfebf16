"""`neuromask compare` and `neuromask evaluate` through Typer's runner."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from neuromask_onnx.cli import app

MODEL = Path(__file__).resolve().parent.parent / "models" / "cnn_nchw.onnx"
FAST = ["--nm-steps", "3", "--curve-steps", "8", "--preprocess", "raw"]
runner = CliRunner()


@pytest.fixture
def inputs(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    png = tmp_path / "photo.png"
    Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(png)
    npy = tmp_path / "t.npy"
    np.save(npy, rng.uniform(-1, 1, (3, 32, 32)).astype(np.float32))
    return [png, npy]


def _one_line_error(result, out: Path) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert not out.exists() or not any(out.iterdir())
    return lines[0]


def test_compare_writes_table_csv_json_report(inputs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    res = runner.invoke(app, ["compare", str(MODEL), *map(str, inputs), "-o", str(out),
                              "--methods", "saliency,occlusion,neuromask", "--box", "4,4,20,20",
                              *FAST])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.json",
                                                     "report.html"]
    for name in ("saliency", "occlusion", "neuromask", "deletion_auc", "seconds"):
        assert name in res.stdout
    with (out / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["saliency", "occlusion", "neuromask"]
    assert all(0 <= float(r["deletion_auc"]) <= 1 and float(r["seconds"]) > 0 for r in rows)
    assert "pointing_game" in rows[0]
    doc = json.loads((out / "compare.json").read_text())
    assert [i["name"] for i in doc["inputs"]] == ["photo", "t"]
    assert doc["better"]["deletion_auc"] == "lower"
    per = [i["methods"]["saliency"]["insertion_auc"] for i in doc["inputs"]]
    assert doc["summary"][0]["insertion_auc"] == pytest.approx(np.mean(per))
    assert float(rows[0]["insertion_auc"]) == pytest.approx(np.mean(per))
    html = (out / "report.html").read_text()
    assert html.count("<img") == 2 * 4
    assert html.count("<svg") == 2 * 3
    assert 'id="nm-summary"' in html
    assert "http" not in html.replace("http://www.w3.org", "")
    # same seed, same numbers (--force overwrites)
    again = runner.invoke(app, ["compare", str(MODEL), *map(str, inputs), "-o", str(out),
                                "--methods", "saliency,occlusion,neuromask", "--box",
                                "4,4,20,20", "--force", *FAST])
    assert again.exit_code == 0, again.output
    redo = json.loads((out / "compare.json").read_text())["summary"]
    drop = [[{k: v for k, v in r.items() if k != "seconds"} for r in t] for t in (redo, doc["summary"])]
    assert drop[0] == drop[1]


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "saliency,gradcam"], "unknown method 'gradcam'"),
    (["--methods", ","], "no methods given"),
    (["--box", "1,2,3"], "--box takes y0,x0,y1,x1"),
    (["--box", "10,10,5,20"], "box"),
    (["--deletion-baseline", "noise"], "'--deletion-baseline'"),  # an Enum: click names the flag
    (["--target", "10"], "out of range"),
])
def test_compare_errors_write_nothing(inputs: list[Path], tmp_path: Path, args: list[str],
                                      message: str) -> None:
    out = tmp_path / "cmp"
    res = runner.invoke(app, ["compare", str(MODEL), *map(str, inputs), "-o", str(out),
                              "--methods", "saliency", *FAST, *args])
    assert message in _one_line_error(res, out)


def test_compare_refuses_to_overwrite(inputs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "report.html").write_text("mine")
    res = runner.invoke(app, ["compare", str(MODEL), str(inputs[1]), "-o", str(out),
                              "--methods", "saliency", *FAST])
    assert res.exit_code == 1
    assert "--force" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]
    assert (out / "report.html").read_text() == "mine"
    bad = runner.invoke(app, ["compare", str(MODEL), str(tmp_path / "nope.png"), "-o",
                              str(tmp_path / "o2"), "--methods", "saliency", *FAST])
    assert "does not exist" in _one_line_error(bad, tmp_path / "o2")


def test_evaluate(inputs: list[Path], tmp_path: Path) -> None:
    m = tmp_path / "map.npy"
    np.save(m, np.random.default_rng(1).random((32, 32)).astype(np.float32))
    res = runner.invoke(app, ["evaluate", str(MODEL), str(inputs[1]), str(m), "--json",
                              "--curve-steps", "8", "--box", "0,0,16,16", "--target", "2"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["target"] == 2
    assert set(doc) >= {"deletion_auc", "insertion_auc", "sparsity", "pointing_game",
                        "energy_in_box"}
    text = runner.invoke(app, ["evaluate", str(MODEL), str(inputs[1]), str(m)])
    assert text.exit_code == 0
    assert "lower is better" in text.stdout
    # input-shaped maps are reduced over channels; a wrong shape is one error line
    full = tmp_path / "full.npy"
    np.save(full, np.ones((3, 32, 32), np.float32))
    assert runner.invoke(app, ["evaluate", str(MODEL), str(inputs[1]), str(full)]).exit_code == 0
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones((16, 16), np.float32))
    res = runner.invoke(app, ["evaluate", str(MODEL), str(inputs[1]), str(bad)])
    assert "mask axes take [32, 32]" in _one_line_error(res, tmp_path / "none")
