"""`neuromask serve`: the KServe model server in its own process on a free loopback port,
answering V1 :predict and :explain over HTTP; bad requests are 400s with one sentence, and
concurrent requests give what the same requests give one by one."""

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
from neuromask_onnx.localserver import serving
from neuromask_onnx.optimize import preset

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "cnn_nchw.onnx"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import importlib.util

    # not imported here: kserve's and tritonclient's V2 protos clash in one process
    if importlib.util.find_spec("kserve") is None:
        pytest.skip("kserve is not installed (it is in the test extra)")
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with serving([str(MODEL), "--preprocess", "raw", "--workers", "2", "--max-steps", "200",
                  "--max-instances", "4", "--max-body-mb", "1"], "cnn_nchw", log=log,
                 timeout=90, grace=15) as served:
        assert f"running on http://127.0.0.1:{served.port}" in served.log_text()  # loopback
        yield served.model_url


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
