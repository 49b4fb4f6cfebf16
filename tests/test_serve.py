"""`neuromask serve`: the KServe model server in its own process on free loopback ports,
answering V1 :predict and :explain over HTTP, and V2 infer for the instrumented model over
HTTP and gRPC, which `neuromask explain --server` drives to the same masks as a local run; bad
requests are 400s with one sentence, and concurrent requests give what the same requests give
one by one."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from neuromask_onnx.explain import NeuroMask
from neuromask_onnx.localserver import Served, free_port, serving
from neuromask_onnx.optimize import preset

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "cnn_nchw.onnx"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, int]]:
    """The running `neuromask serve` and its gRPC port."""
    import importlib.util

    # not imported here: kserve's and tritonclient's V2 protos clash in one process
    if importlib.util.find_spec("kserve") is None:
        pytest.skip("kserve is not installed (it is in the test extra)")
    log = tmp_path_factory.mktemp("serve") / "server.log"
    grpc_port = free_port()
    with serving([str(MODEL), "--preprocess", "raw", "--workers", "2", "--max-steps", "200",
                  "--max-instances", "4", "--max-body-mb", "1", "--grpc-port", str(grpc_port)],
                 "cnn_nchw", log=log, timeout=90, grace=15) as served:
        assert f"running on http://127.0.0.1:{served.port}" in served.log_text()  # loopback
        yield served, grpc_port


@pytest.fixture(scope="module")
def url(server: tuple[Served, int]) -> str:
    return server[0].model_url


def _post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _png(seed: int) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(seed)
    px = (rng.uniform(0, 1, (32, 32, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    x = (px.astype(np.float32)).transpose(2, 0, 1)  # raw preprocessing, 32x32 as the model
    return buf.getvalue(), x


def _local(x: np.ndarray, steps: int, seed: int, target: int | None) -> Any:
    nm = NeuroMask(MODEL, preset("default").replace(steps=steps, seed=seed), provider="cpu",
                   threads=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nm.attribute(x, target=target)


def test_explain_an_image_with_overlay(url: str) -> None:
    png, x = _png(0)
    code, doc = _post(url + ":explain", {"instances": [{"image_b64": base64.b64encode(png)
                                                        .decode()}],
                                         "parameters": {"steps": 15, "overlay": True}})
    assert code == 200, doc
    (ex,) = doc["explanations"]
    assert ex["mask_shape"] == [32, 32]
    assert ex["steps"] == 15
    want = _local(x, 15, 0, None)
    assert ex["target"] == want.target
    np.testing.assert_allclose(np.array(ex["mask"]), want.mask, atol=1e-5)
    assert ex["prob_after"] == pytest.approx(want.prob_after, abs=1e-5)
    with Image.open(io.BytesIO(base64.b64decode(ex["overlay_png"]))) as ov:
        assert ov.size == (32, 32)
    assert doc["config"]["steps"] == 15


def test_predict_a_tensor(url: str) -> None:
    _, x = _png(1)
    code, doc = _post(url + ":predict", {"instances": [{"tensor": x.tolist()}]})
    assert code == 200, doc
    p = np.array(doc["predictions"][0]["probabilities"])
    nm = NeuroMask(MODEL, provider="cpu", threads=1)
    np.testing.assert_allclose(p, nm.predict(x[None])[0], atol=1e-6)
    assert doc["predictions"][0]["target"] == int(np.argmax(p))


def test_concurrent_requests_are_independent(url: str) -> None:
    jobs = [(seed, (None, 3, 7)[seed % 3]) for seed in range(6)]
    inputs = {seed: _png(seed) for seed, _ in jobs}

    def ask(job: tuple[int, int | None]) -> tuple[int, dict[str, Any]]:
        seed, target = job
        inst: dict[str, Any] = {"tensor": inputs[seed][1].tolist()}
        if target is not None:
            inst["target"] = target
        return _post(url + ":explain", {"instances": [inst],
                                        "parameters": {"steps": 12, "seed": seed}})

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, jobs))
    for (seed, target), (code, doc) in zip(jobs, answers, strict=True):
        assert code == 200, doc
        want = _local(inputs[seed][1], 12, seed, target)
        got = doc["explanations"][0]
        assert got["target"] == want.target
        np.testing.assert_allclose(np.array(got["mask"]), want.mask, atol=1e-5)


@pytest.mark.parametrize(("body", "text"), [
    ({"instances": [{"image_b64": "@@@"}]}, "not valid base64"),
    ({"instances": [{"image_b64": base64.b64encode(b"hello").decode()}]}, "not an image"),
    ({"instances": [{"tensor": [[1.0, 2.0]]}]}, "takes [3, 32, 32]"),
    ({"instances": [{"tensor": "x"}]}, "not a numeric array"),
    ({"instances": []}, "instances is empty"),
    ({"instances": [{"tensor": 0}] * 5}, "the limit is 4"),
    ({"x": 1}, "must be a JSON object"),
    ({"instances": [{"tensor": np.zeros((3, 32, 32)).tolist(), "target": 99}]}, "out of range"),
    ({"instances": [{"tensor": 1}], "parameters": {"steps": 201}}, "1..200"),
    ({"instances": [{"tensor": 1}], "parameters": {"preset": "nope"}}, "preset"),
    (b"{not json", "request format"),
    ({"instances": [{"tensor": [0.5] * 300_000}]}, "the limit is 1048576"),
])
def test_bad_requests_are_400_with_one_sentence(url: str, body: Any, text: str) -> None:
    code, doc = _post(url + ":explain", body)
    assert code == 400, doc
    assert text in doc["error"]
    assert "\n" not in doc["error"]
    assert "Traceback" not in doc["error"]


# --------------------------------------------------------------------------- V2 infer

def test_v2_metadata_and_config_describe_the_instrumented_model(
        server: tuple[Served, int]) -> None:
    with urllib.request.urlopen(f"{server[0].url}/v2/models/cnn_nchw", timeout=30) as r:
        md = json.loads(r.read())
    ins = {t["name"]: (t["datatype"], t["shape"]) for t in md["inputs"]}
    assert ins == {"input": ("FP32", [-1, 3, 32, 32]), "nm_mask": ("FP32", [-1, 1, 32, 32]),
                   "nm_target": ("INT64", [-1]), "nm_baseline": ("FP32", [-1, 3, 32, 32])}
    assert [t["name"] for t in md["outputs"]] == ["nm_loss", "nm_grad_mask", "nm_probs"]
    with urllib.request.urlopen(f"{server[0].url}/v2/models/cnn_nchw/config", timeout=30) as r:
        cfg = json.loads(r.read())
    assert cfg["max_batch_size"] == 4  # --max-instances
    params = {k: v["string_value"] for k, v in cfg["parameters"].items()}
    assert params["neuromask.objective"] == "probability"
    assert json.loads(params["neuromask.preprocess"])["mean"] == [0.0]  # --preprocess raw


def test_cli_explain_against_neuromask_serve_matches_a_local_run(
        server: tuple[Served, int], tmp_path: Path) -> None:
    """`explain --server` over HTTP: shapes, objective and preprocessing from the server
    (no --preprocess here), every step one V2 infer on `neuromask serve`."""
    from typer.testing import CliRunner

    from neuromask_onnx.cli import app

    runner = CliRunner()
    rng = np.random.default_rng(0)
    img = tmp_path / "photo.png"
    Image.fromarray((rng.uniform(0, 1, (40, 50, 3)) * 255).astype(np.uint8)).save(img)
    args = [str(img), "--quiet", "--steps", "8", "--seed", "3"]
    res = runner.invoke(app, ["explain", *args, "--server", server[0].url,
                              "--served-model", "cnn_nchw", "-o", str(tmp_path / "remote")])
    assert res.exit_code == 0, res.output
    local = runner.invoke(app, ["explain", str(MODEL), *args, "--preprocess", "raw",
                                "--provider", "cpu", "-o", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    got = json.loads((tmp_path / "remote" / "photo.json").read_text())
    want = json.loads((tmp_path / "local" / "photo.json").read_text())
    assert got["target"]["index"] == want["target"]["index"]
    assert got["provider"] == f"cnn_nchw at {server[0].url}"
    np.testing.assert_allclose(np.load(tmp_path / "remote" / "photo.mask.npy"),
                               np.load(tmp_path / "local" / "photo.mask.npy"), atol=1e-5)


def test_remote_masks_over_grpc_match_a_local_run(server: tuple[Served, int]) -> None:
    from neuromask_onnx.remote import RemoteNeuroMask, ServedModel

    url = f"grpc://127.0.0.1:{server[1]}"
    served = ServedModel.connect(url, "cnn_nchw")
    assert served.max_batch_size == 4  # over gRPC's ModelConfig
    cfg = preset("default").replace(steps=8)
    xs = [_png(s)[1] for s in range(3)]
    remote = RemoteNeuroMask(served, cfg, batch_size=2)  # chunks of 2 and 1
    local = NeuroMask(MODEL, cfg, batch_size=2, provider="cpu", threads=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = remote.explain_many(xs, [None, 3, 7])
        want = local.explain_many(xs, [None, 3, 7])
    for (g,), (w,) in zip(got, want, strict=True):
        assert g.target == w.target
        np.testing.assert_allclose(g.mask, w.mask, atol=1e-5)


def _v2(batch: int = 1, **change: Any) -> dict[str, Any]:
    """A valid V2 infer body for cnn_nchw, with `change[name]` merged into that input."""
    spec = {"input": ("FP32", [3, 32, 32]), "nm_mask": ("FP32", [1, 32, 32]),
            "nm_target": ("INT64", []), "nm_baseline": ("FP32", [3, 32, 32])}
    inputs = []
    for name, (dtype, dims) in spec.items():
        shape = [batch, *dims]
        t = {"name": name, "datatype": dtype, "shape": shape,
             "data": [0] * int(np.prod(shape))}
        inputs.append({**t, **change.get(name, {})})
    return {"inputs": inputs}


def test_v2_infer_json(server: tuple[Served, int]) -> None:
    code, doc = _post(f"{server[0].url}/v2/models/cnn_nchw/infer",
                      _v2(2, nm_mask={"data": [1.0] * 2048}))
    assert code == 200, doc
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["nm_probs"]["shape"] == [2, 10]
    assert sum(out["nm_probs"]["data"][:10]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(("body", "text"), [
    (b"{not json", "not a V2 inference request"),
    ({"inputs": 3}, "request at inputs"),
    ({"inputs": []}, "lacks input 'input'"),
    ({"inputs": [{"name": "zz", "datatype": "FP32", "shape": [1], "data": [1]}]},
     "has no input 'zz'"),
    (_v2(input={"datatype": "FP64"}), "datatype FP64; the model takes FP32"),
    (_v2(input={"shape": [1, 3, 16, 16]}), "takes [batch, 3, 32, 32]"),
    (_v2(5), "takes 1 to 4 per request"),
    (_v2(nm_mask={"shape": [2, 1, 32, 32]}), "the same batch"),
    (_v2(input={"data": [1.0, 2.0]}), "does not fill shape"),
    (_v2(input={"data": ["a"] * 3072}), "does not fill shape"),
    (_v2(nm_target={"data": [10]}), "class indices run 0..9"),
    ({**_v2(), "outputs": [{"name": "nope"}]}, "has no output 'nope'"),
    (_v2(input={"data": [0.5] * 300_000}), "the limit is 1048576"),
])
def test_bad_v2_requests_are_400_with_one_sentence(server: tuple[Served, int], body: Any,
                                                   text: str) -> None:
    code, doc = _post(f"{server[0].url}/v2/models/cnn_nchw/infer", body)
    assert code == 400, doc
    assert text in doc["error"]
    assert "\n" not in doc["error"]
    assert "Traceback" not in doc["error"]


def test_bad_v2_binary_header_and_grpc_request(server: tuple[Served, int]) -> None:
    req = urllib.request.Request(f"{server[0].url}/v2/models/cnn_nchw/infer", data=b"{}",
                                 headers={"Inference-Header-Content-Length": "abc"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 400
    assert "header must be the JSON part's length" in json.loads(refused.value.read())["error"]
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(f"127.0.0.1:{server[1]}")
    x = tc.InferInput("input", [1, 3, 16, 16], "FP32")
    x.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(tc.InferenceServerException) as err:
        client.infer("cnn_nchw", [x])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "lacks input 'nm_mask'" in err.value.message()


def test_v2_model_objective_and_batch_limit_are_what_it_serves() -> None:
    """`serve --objective` / `--max-instances` reach the served model (no server needed)."""
    import onnx

    from neuromask_onnx.serve_v2 import V2Model

    v2 = V2Model.build(onnx.load(MODEL), "cnn", preprocessing=None, labels=None,
                       objective="cross_entropy", max_batch_size=3)
    cfg = v2.config()
    assert cfg["max_batch_size"] == 3
    assert cfg["parameters"]["neuromask.objective"] == {"string_value": "cross_entropy"}
    rng = np.random.default_rng(0)
    feeds = {"input": rng.standard_normal((2, 3, 32, 32)).astype(np.float32),
             "nm_mask": np.ones((2, 1, 32, 32), np.float32),
             "nm_target": np.array([1, 4]), "nm_baseline": np.zeros((2, 3, 32, 32), np.float32)}
    loss, _, probs = v2.run(feeds)
    np.testing.assert_allclose(loss, -np.log(probs[[0, 1], [1, 4]]), rtol=1e-4)
