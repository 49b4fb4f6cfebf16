"""`neuromask explain-dataset` on a real local Ray (2 CPUs, loopback, explicit object store)
over a directory of fixture images with one corrupt file: per-input files, the summary table,
the error row, and a resumed rerun that redoes only what is missing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from neuromask_onnx.cli import app
from neuromask_onnx.dataset import plan_rows, read_source

MODEL = Path(__file__).resolve().parent.parent / "models" / "cnn_nchw.onnx"
runner = CliRunner()
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    pytest.importorskip("pyarrow")
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "disabled")  # no token file in $HOME for a test cluster
    ray.init(num_cpus=2, object_store_memory=128 << 20, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    try:
        yield
    finally:
        ray.shutdown()
        mp.undo()


def _images(d: Path) -> Path:
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.uniform(0, 1, (36, 44, 3)) * 255).astype(np.uint8)).save(
            d / f"img{i}.png")
    (d / "broken.png").write_bytes(b"\x89PNG but not really")
    return d


def test_directory_on_ray_with_a_corrupt_file_and_resume(ray_local: None,
                                                         tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    src, out = _images(tmp_path / "images"), tmp_path / "out"
    args = ["explain-dataset", str(MODEL), str(src), "-o", str(out), "--steps", "8",
            "--preprocess", "raw", "--batch-size", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "5 inputs, 4 explained, 1 errors" in res.stdout
    assert "5/5 inputs" in res.stderr
    table = pq.read_table(out / "summary.parquet").to_pylist()
    by = {r["stem"]: r for r in table}
    assert sorted(by) == ["broken", "img0", "img1", "img2", "img3"]
    assert by["broken"]["status"].startswith("error: cannot read image")
    for i in range(4):
        r = by[f"img{i}"]
        assert r["status"] == "ok"
        assert r["steps"] == 8
        doc = json.loads((out / f"img{i}.json").read_text())
        assert int(r["target"]) == doc["target"]["index"]
        assert r["prob_after"] == pytest.approx(doc["prob_after"])
        assert len(json.loads(r["top5"])) == 5
        assert np.load(out / f"img{i}.mask.npy").shape == (32, 32)
        assert (out / f"img{i}.overlay.png").exists()
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("input,stem,status,target")
    assert len(csv_lines) == 6

    # a rerun redoes only the incomplete ones: img1 lost its overlay, img2 is untouched
    (out / "img1.overlay.png").unlink()
    before = (out / "img2.mask.npy").stat().st_mtime_ns
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    by = {r["stem"]: r for r in pq.read_table(out / "summary.parquet").to_pylist()}
    assert by["img1"]["status"] == "ok"
    assert by["img2"]["status"] == "ok (earlier run)"
    assert by["broken"]["status"].startswith("error")
    assert (out / "img1.overlay.png").exists()
    assert (out / "img2.mask.npy").stat().st_mtime_ns == before


def test_sources_file_list_and_manifest(tmp_path: Path) -> None:
    src = _images(tmp_path / "images")
    listing = tmp_path / "list.txt"
    listing.write_text("images/img0.png\n# a comment\n\nimages/img1.png\n")
    assert read_source(listing) == [(str(tmp_path / "images/img0.png"), None),
                                    (str(tmp_path / "images/img1.png"), None)]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"input,target\n{src / 'img0.png'},3\n{src / 'img0.png'},\n")
    rows = plan_rows(read_source(manifest))
    assert [(r["stem"], r["target"]) for r in rows] == [("img0", "3"), ("img0-1", "")]
    bad = tmp_path / "bad.csv"
    bad.write_text("path\nx.png\n")
    with pytest.raises(Exception, match="needs an 'input' column"):
        read_source(bad)
