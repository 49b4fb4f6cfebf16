"""Triton: the repository `instrument --triton` writes, served by the real tritonserver binary
(from nvidia-pytriton, Python backend, loopback, free ports), and NeuroMask as its client.

The server starts once for the module and stops in teardown. The onnxruntime-backend
config.pbtxt (what an NVIDIA Triton container serves) is parsed with Triton's own ModelConfig
protobuf, shipped in tritonclient.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from typer.testing import CliRunner

from neuromask_onnx.cli import app
from neuromask_onnx.explain import NeuroMask
from neuromask_onnx.optimize import preset
from neuromask_onnx.rewrite import instrument
from neuromask_onnx.triton import PYTHON_MODEL, batch_loop, config_pbtxt, write_repository

MODELS = Path(__file__).resolve().parent.parent / "models"
CNN = MODELS / "cnn_nchw.onnx"
LABELS = [f"class {i} \"q\"" for i in range(10)]
runner = CliRunner()


def test_batch_loop_runs_any_batch_like_the_pinned_model() -> None:
    served = batch_loop(instrument(CNN, batch_size=1, baseline=True))
    pinned = instrument(CNN, batch_size=3, baseline=True)
    s = ort.InferenceSession(served.SerializeToString(), providers=["CPUExecutionProvider"])
    p = ort.InferenceSession(pinned.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"input": rng.standard_normal((3, 3, 32, 32)).astype(np.float32),
             "nm_mask": rng.uniform(0, 1, (3, 1, 32, 32)).astype(np.float32),
             "nm_target": np.array([1, 4, 9], np.int64),
             "nm_baseline": rng.standard_normal((3, 3, 32, 32)).astype(np.float32)}
    for got, want in zip(s.run(None, feeds), p.run(None, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    one = {k: v[:1] for k, v in feeds.items()}
    assert [a.shape for a in s.run(None, one)] == [(1,), (1, 1, 32, 32), (1, 10)]


def test_onnxruntime_config_follows_tritons_schema(tmp_path: Path) -> None:
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    target = write_repository(CNN, tmp_path, name="cnn", max_batch_size=4, labels=LABELS)
    assert sorted(p.name for p in target.rglob("*") if p.is_file()) == ["config.pbtxt",
                                                                        "model.onnx"]
    cfg = text_format.Parse((target / "config.pbtxt").read_text(),
                            model_config_pb2.ModelConfig())
    assert (cfg.name, cfg.backend, cfg.max_batch_size) == ("cnn", "onnxruntime", 4)
    assert cfg.HasField("dynamic_batching")
    ins = {t.name: t for t in cfg.input}
    outs = {t.name: t for t in cfg.output}
    assert list(ins["input"].dims) == [3, 32, 32]  # no batch axis: Triton adds it
    assert list(ins["nm_mask"].dims) == [1, 32, 32]
    assert list(ins["nm_baseline"].dims) == [3, 32, 32]
    assert list(ins["nm_target"].dims) == [1]
    assert list(ins["nm_target"].reshape.shape) == []
    assert list(outs["nm_loss"].dims) == [1]
    assert outs["nm_loss"].HasField("reshape")
    assert list(outs["nm_probs"].dims) == [10]
    T = model_config_pb2.DataType
    assert ins["input"].data_type == T.Value("TYPE_FP32")
    assert ins["nm_target"].data_type == T.Value("TYPE_INT64")
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert json.loads(params["neuromask.labels"]) == LABELS
    assert params["neuromask.mask_axes"] == "2,3"
    assert params["neuromask.num_classes"] == "10"
    # the dims agree with the file Triton's onnxruntime backend would load
    s = ort.InferenceSession(str(target / "1" / "model.onnx"))
    for i in s.get_inputs():
        t = ins[i.name]
        want = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
        assert i.shape[0] == "batch"
        assert list(i.shape[1:]) == want


def test_repository_refuses_to_overwrite(tmp_path: Path) -> None:
    write_repository(CNN, tmp_path, name="cnn")
    res = runner.invoke(app, ["instrument", str(CNN), "--triton", str(tmp_path),
                              "--triton-name", "cnn"])
    assert res.exit_code == 1
    assert "pass --force" in res.stderr
    res = runner.invoke(app, ["instrument", str(CNN), "--triton", str(tmp_path),
                              "--triton-name", "cnn", "--force", "--python-backend"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cnn" / "1" / "model.py").read_text() == PYTHON_MODEL


# --------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    pytest.importorskip("pytriton")
    pytest.importorskip("tritonclient.grpc")
    from neuromask_onnx.tritonserver import local_server

    repo = tmp_path_factory.mktemp("repo")
    labels = repo.parent / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    res = runner.invoke(app, ["instrument", str(CNN), "--triton", str(repo), "--triton-name",
                              "cnn", "--python-backend", "--labels", str(labels)])
    assert res.exit_code == 0, res.output
    plain = repo / "plain"  # a served model that is not instrumented
    (plain / "1").mkdir(parents=True)
    shutil.copy(CNN, plain / "1" / "model.onnx")
    (plain / "1" / "model.py").write_text(PYTHON_MODEL)
    import onnx

    (plain / "config.pbtxt").write_text(config_pbtxt("plain", onnx.load(CNN), backend="python"))
    with local_server(repo) as s:
        yield s


CFG = preset("default").replace(steps=30)


def _inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return list(rng.standard_normal((3, 3, 32, 32)).astype(np.float32))


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_remote_masks_match_a_local_run(server, scheme: str) -> None:  # type: ignore[no-untyped-def]
    from neuromask_onnx.remote import RemoteNeuroMask, ServedModel

    url = server.grpc_url if scheme == "grpc" else server.http_url
    served = ServedModel.connect(url, "cnn")
    assert served.max_batch_size == 8
    assert served.labels() == LABELS
    remote = RemoteNeuroMask(served, CFG, batch_size=2)  # 3 inputs: chunks of 2 and 1
    local = NeuroMask(CNN, CFG, batch_size=2, provider="cpu", labels=LABELS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = remote.explain_many(_inputs(), [None, 3, "class 5 \"q\""])
        want = local.explain_many(_inputs(), [None, 3, "class 5 \"q\""])
    for (g,), (w,) in zip(got, want, strict=True):
        assert (g.target, g.label, g.steps) == (w.target, w.label, w.steps)
        np.testing.assert_allclose(g.mask, w.mask, atol=1e-5)
        np.testing.assert_allclose(g.losses, w.losses, rtol=1e-4, atol=1e-5)
        assert g.prob_after == pytest.approx(w.prob_after, abs=1e-4)
        assert g.provider == f"cnn at {url}"


def test_cli_explain_against_the_server(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    img = tmp_path / "photo.png"
    Image.fromarray((rng.uniform(0, 1, (40, 50, 3)) * 255).astype(np.uint8)).save(img)
    args = [str(img), "--quiet", "--steps", "10", "--preprocess", "raw", "--scale", "0.00392",
            "--seed", "3"]
    res = runner.invoke(app, ["explain", *args, "--server", server.grpc_url,
                              "--served-model", "cnn", "-o", str(tmp_path / "remote")])
    assert res.exit_code == 0, res.output
    local = runner.invoke(app, ["explain", str(CNN), *args, "--provider", "cpu",
                                "-o", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    got = json.loads((tmp_path / "remote" / "photo.json").read_text())
    want = json.loads((tmp_path / "local" / "photo.json").read_text())
    assert got["target"]["index"] == want["target"]["index"]
    assert got["target"]["label"] == LABELS[got["target"]["index"]]  # from the server
    assert got["provider"] == f"cnn at {server.grpc_url}"
    assert got["model"]["path"] is None
    np.testing.assert_allclose(np.load(tmp_path / "remote" / "photo.mask.npy"),
                               np.load(tmp_path / "local" / "photo.mask.npy"), atol=1e-5)
    assert (tmp_path / "remote" / "photo.overlay.png").exists()


def _error(*args: str) -> str:
    res = runner.invoke(app, ["explain", *args, "--quiet", "--steps", "2"])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_one_line_errors(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from neuromask_onnx.localserver import free_port

    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((3, 32, 32), np.float32))
    msg = _error(str(npy), "--server", server.grpc_url, "--served-model", "nope")
    assert "no ready model 'nope'" in msg
    assert "cnn" in msg
    msg = _error(str(npy), "--server", server.http_url, "--served-model", "plain")
    assert "not an instrumented model" in msg
    msg = _error(str(npy), "--server", f"grpc://127.0.0.1:{free_port()}", "--served-model",
                 "cnn", "--server-timeout", "2")
    assert "cannot reach the server" in msg
    assert "is the server running" in msg
    msg = _error(str(npy), "--server", "ftp://x:1", "--served-model", "cnn")
    assert "--server takes grpc://HOST:PORT" in msg
    assert "--served-model" in _error(str(npy), "--server", server.grpc_url)
    np.save(npy, np.zeros((3, 16, 16), np.float32))
    assert "takes 3x32x32" in _error(str(npy), "--server", server.grpc_url,
                                         "--served-model", "cnn")


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_kserve_explainer_in_front_of_triton(  # type: ignore[no-untyped-def]
        server, tmp_path: Path, scheme: str) -> None:
    """`neuromask serve --predictor-host`: KServe's explainer pattern, the loop in the KServe
    process and every step an infer on Triton (gRPC through v2grpc: see serve.model)."""
    import importlib.util
    import urllib.error
    import urllib.request

    from neuromask_onnx.localserver import serving

    if importlib.util.find_spec("kserve") is None:
        pytest.skip("kserve is not installed (it is in the test extra)")
    url = server.grpc_url if scheme == "grpc" else server.http_url
    with serving(["--predictor-host", url, "--served-model", "cnn"], "cnn",
                 log=tmp_path / "server.log", timeout=90, grace=15) as served:
        infer = urllib.request.Request(f"{served.url}/v2/models/cnn/infer", data=json.dumps(
            {"inputs": []}).encode(), headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:  # V2 infer is Triton's here
            urllib.request.urlopen(infer, timeout=30)
        assert refused.value.code == 400
        assert "send V2 infer requests there" in json.loads(refused.value.read())["error"]
        x = _inputs()[0]
        body = {"instances": [{"tensor": x.tolist(), "target": 4}],
                "parameters": {"steps": 12, "seed": 2}}
        req = urllib.request.Request(served.model_url + ":explain",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            (got,) = json.loads(r.read())["explanations"]
    local = NeuroMask(CNN, preset("default").replace(steps=12, seed=2), provider="cpu",
                      labels=LABELS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = local.attribute(x, target=4)
    assert got["target"] == 4
    assert got["label"] == LABELS[4]  # read from Triton's config parameters
    np.testing.assert_allclose(np.array(got["mask"]), want.mask, atol=1e-4)
