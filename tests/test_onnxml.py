"""ONNX-ML exports (skl2onnx, onnxmltools): loading, the output explained, whole-model gradients.

Whole models are real scikit-learn pipelines on the datasets scikit-learn ships, converted by
skl2onnx; their gradient graphs (float32, onnxruntime) are checked by the dot-product test
against float64 central differences of the same model on onnx's reference evaluator, and
the instrumented fixtures against central differences of their own loss. The CLI runs on every fixture in models/sklearn with no flags.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from neuromask_onnx import instrument, io_names
from neuromask_onnx.cli import app
from neuromask_onnx.errors import UnsupportedOpError
from neuromask_onnx.graph import pruned
from neuromask_onnx.reverse import vjp
from neuromask_onnx.rewrite import op_report

SK = Path(__file__).resolve().parent.parent / "models" / "sklearn"
FIXTURES = sorted(p.stem for p in SK.glob("*.onnx"))
F32 = TensorProto.FLOAT


def _ml_model(nodes: list[onnx.NodeProto], opsets: dict[str, int]) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, [None, 3])],
                          [helper.make_tensor_value_info("y", F32, [None, 3])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid(d, v)
                                               for d, v in opsets.items()])


def test_onnxruntime_ships_logreg_iris_and_the_fixture_is_it() -> None:
    shipped = Path(ort.__file__).parent / "datasets" / "logreg_iris.onnx"
    assert shipped.read_bytes() == (SK / "logreg_iris.onnx").read_bytes()


def test_an_ml_only_graph_loads_without_conversion() -> None:
    """logreg_iris: only ai.onnx.ml opset 1, fixed batch 3, probabilities through a ZipMap."""
    m = instrument(SK / "logreg_iris.onnx", batch_size=3)
    props = {p.key: p.value for p in m.metadata_props}
    assert props["neuromask.output"] == "probability_tensor_normalized"
    assert props["neuromask.output_kind"] == "probabilities"
    assert {(o.domain, o.version) for o in m.opset_import} >= {("ai.onnx.ml", 1), ("", 18)}


def test_an_ancient_default_opset_beside_ml_ops_is_converted() -> None:
    scaler = helper.make_node("Scaler", ["x"], ["s"], domain="ai.onnx.ml", offset=[0.0],
                              scale=[2.0])
    model = _ml_model([scaler, helper.make_node("Softmax", ["s"], ["y"], axis=1)],
                      {"": 7, "ai.onnx.ml": 1})
    m = instrument(model, batch_size=2)
    assert ("", 18) in {(o.domain, o.version) for o in m.opset_import}


def test_a_custom_domain_op_never_takes_an_ml_rule() -> None:
    """Rules are keyed by domain: com.example::Scaler is not ai.onnx.ml::Scaler."""
    node = helper.make_node("Scaler", ["x"], ["y"], domain="com.example", scale=[2.0])
    with pytest.raises(UnsupportedOpError, match=r"com\.example::Scaler"):
        instrument(_ml_model([node], {"": 18, "com.example": 1}), batch_size=2)


def test_zero_gradient_ml_ops_are_constants_for_the_gradient() -> None:
    """y = x * Binarizer(x): the Binarizer passes no gradient, so dy/dx = [x > 0.5]."""
    b = helper.make_node("Binarizer", ["x"], ["b"], domain="ai.onnx.ml", threshold=0.5)
    model = _ml_model([b, helper.make_node("Mul", ["x", "b"], ["y"])], {"": 18, "ai.onnx.ml": 1})
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    vm = vjp(model)
    sess = ort.InferenceSession(vm.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([[0.2, 0.7, 1.5], [-1.0, 0.6, 0.1]], np.float32)
    g = sess.run(["nm_grad_x"], {"x": x, "nm_cot_y": np.ones_like(x)})[0]
    np.testing.assert_array_equal(g, (x > 0.5).astype(np.float32))


KERNELS = ("linear", "poly", "rbf", "sigmoid")
PIPELINES = ["iris_logreg", "wine_mlp", "cancer_logreg", "digits_l2_logreg",
             "diabetes_imputer_linear", *(f"{d}_{k}" for k in KERNELS
                                          for d in ("cancer_svc", "iris_svc", "diabetes_svr"))]


@functools.cache
def _pipeline(name: str) -> tuple[Any, np.ndarray]:
    """The fitted scikit-learn pipeline `name` and three rows of its dataset (float32)."""
    from sklearn.datasets import (
        load_breast_cancer,
        load_diabetes,
        load_digits,
        load_iris,
        load_wine,
    )
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler, Normalizer, StandardScaler
    from sklearn.svm import SVC, SVR

    iris, wine, digits, diab = (load_iris(), load_wine(), load_digits(), load_diabetes())
    cancer = load_breast_cancer()
    cases: dict[str, tuple[Any, Any, Any]] = {
        "iris_logreg": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
                        iris.data, iris.target),
        "wine_mlp": (make_pipeline(StandardScaler(), MLPClassifier((8,), max_iter=800,
                                                                    random_state=0)),
                     wine.data, wine.target),
        "cancer_logreg": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
                          cancer.data, cancer.target),
        "digits_l2_logreg": (make_pipeline(Normalizer(), LogisticRegression(max_iter=500)),
                             digits.data[:400], digits.target[:400]),
        "diabetes_imputer_linear": (make_pipeline(SimpleImputer(), MaxAbsScaler(),
                                                  LinearRegression()), diab.data, diab.target),
    }
    for kernel in KERNELS:
        cases[f"cancer_svc_{kernel}"] = (make_pipeline(StandardScaler(), SVC(kernel=kernel)),
                                         cancer.data, cancer.target)
        cases[f"iris_svc_{kernel}"] = (make_pipeline(StandardScaler(), SVC(kernel=kernel)),
                                       iris.data, iris.target)
        cases[f"diabetes_svr_{kernel}"] = (make_pipeline(StandardScaler(), SVR(kernel=kernel)),
                                           diab.data, diab.target)
    est, x, y = cases[name]
    est.fit(x, y)
    return est, x[:3].astype(np.float32)


def _float_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Only the float outputs (labels and ZipMaps dropped), batch pinned to 3."""
    from neuromask_onnx.onnxml import zipmap_sources

    m = onnx.ModelProto()
    m.CopyFrom(model)
    src = zipmap_sources(m)
    keep = [o for o in m.graph.output if o.type.tensor_type.elem_type == F32]
    if src:
        keep = [helper.make_tensor_value_info(next(iter(src)), F32, None)]
    del m.graph.output[:]
    m.graph.output.extend(keep)
    m = pruned(m, [o.name for o in keep])
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 3
    return m


def _to_double(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same forward graph in float64 (input, float initializers, Cast targets)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in [*m.graph.input, *m.graph.output]:
        if vi.type.tensor_type.elem_type == F32:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    for t in m.graph.initializer:
        if t.data_type == F32:
            t.CopyFrom(onnx.numpy_helper.from_array(
                onnx.numpy_helper.to_array(t).astype(np.float64), t.name))
    for node in m.graph.node:
        for a in node.attribute:
            if a.name == "to" and a.i == F32:
                a.i = TensorProto.DOUBLE
    return m


@pytest.mark.parametrize("name", PIPELINES)
def test_sklearn_pipeline_gradient(name: str, rng: np.random.Generator) -> None:
    """The float32 gradient graph (onnxruntime) against float64 central differences (the
    reference evaluator runs the ONNX-ML ops in float64): the dot-product test.

    (The gradient graph itself cannot run in float64: there ONNX-ML ops return float64 where
    their schema, and so the rules' constants, say float32.)
    """
    from onnx.reference import ReferenceEvaluator

    pytest.importorskip("sklearn")  # the test extra has both; the lowest-versions job neither
    to_onnx = pytest.importorskip("skl2onnx").to_onnx
    est, x = _pipeline(name)
    with warnings.catch_warnings():  # skl2onnx reads SVC.probA_, deprecated in sklearn 1.9
        warnings.simplefilter("ignore", FutureWarning)
        model = to_onnx(est, x[:1], target_opset={"": 18, "ai.onnx.ml": 3})
    m = _float_graph(model)
    out = m.graph.output[0].name
    grad = ort.InferenceSession(vjp(m).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    ref = ReferenceEvaluator(_to_double(m))
    y = ref.run(None, {"X": x.astype(np.float64)})[0]
    v = rng.standard_normal(y.shape)
    u = rng.standard_normal(x.shape)
    g = grad.run(["nm_grad_X"], {"X": x, f"nm_cot_{out}": v.astype(np.float32)})[0]
    eps = 1e-5
    x64 = x.astype(np.float64)
    up, down = (ref.run(None, {"X": x64 + eps * u})[0], ref.run(None, {"X": x64 - eps * u})[0])
    numeric = float(np.sum(v * (up - down) / (2 * eps)))
    analytic = float(np.sum(u * g.astype(np.float64)))
    assert abs(numeric) > 1e-6
    # 3e-3: the analytic side is float32 (saturated probabilities, 1 - z ~ 1e-7, lose digits);
    # a 1% error in any rule on the path still fails.
    assert abs(analytic - numeric) < 3e-3 * max(abs(numeric), abs(analytic)), (analytic, numeric)


@pytest.mark.parametrize("name", [n for n in FIXTURES if n != "forest_known_answer"])
def test_fixture_mask_gradient_matches_finite_differences(name: str,
                                                          rng: np.random.Generator) -> None:
    """The instrumented float32 model on onnxruntime against float64 central differences
    of its own loss (eps 1e-2: these models are smooth)."""
    src = onnx.load(str(SK / f"{name}.onnx"))
    dim = src.graph.input[0].type.tensor_type.shape.dim[0]
    n = dim.dim_value or 2
    m = instrument(src, batch_size=n)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    row = np.load(SK / f"{name}.row.npy")
    x = np.repeat(row[None], n, axis=0)
    mask = rng.uniform(0.3, 0.9, (n, row.size)).astype(np.float32)
    feeds = {src.graph.input[0].name: x, io_names.TARGET: np.zeros(n, np.int64)}
    grad = sess.run([io_names.GRAD_MASK], {**feeds, io_names.MASK: mask})[0][0]
    eps = 1e-2
    for i in np.argsort(-np.abs(grad))[:3]:
        e = np.zeros_like(mask)
        e[0, i] = eps
        up = sess.run([io_names.LOSS], {**feeds, io_names.MASK: mask + e})[0][0]
        down = sess.run([io_names.LOSS], {**feeds, io_names.MASK: mask - e})[0][0]
        numeric = (float(up) - float(down)) / (2 * eps)
        assert abs(numeric - grad[i]) <= 3e-2 * abs(grad[i]) + 1e-3, (i, grad[i], numeric)


@pytest.mark.parametrize("name", FIXTURES)
def test_ops_reports_every_op_supported(name: str) -> None:
    res = CliRunner().invoke(app, ["ops", str(SK / f"{name}.onnx")])
    assert res.exit_code == 0, res.output
    assert "every op on the gradient path is supported" in res.output
    if name == "forest_known_answer":
        assert "no gradient exists; the mask gradient will be estimated" in res.output
    statuses = {r.status for r in op_report(SK / f"{name}.onnx") if r.on_path}
    assert "unsupported" not in statuses


@pytest.mark.parametrize("name", FIXTURES)
def test_explain_with_no_flags_writes_its_outputs(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["explain", str(SK / f"{name}.onnx"),
                                   str(SK / f"{name}.row.npy"), "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    stem = f"{name}.row"
    assert {p.name for p in out.iterdir()} == {f"{stem}.json", f"{stem}.mask.npy",
                                               f"{stem}.features.png"}
    doc = json.loads((out / f"{stem}.json").read_text())
    est = name == "forest_known_answer"
    assert doc["gradient"]["kind"] == ("estimate" if est else "exact")
    if est:
        assert doc["gradient"]["model_runs"] >= doc["steps"]
        # 2 x 16 directions + 1 evaluations for every mask row of every run
        assert doc["gradient"]["model_evaluations"] % 33 == 0
        assert doc["gradient"]["model_evaluations"] >= doc["gradient"]["model_runs"] * 33
    feats = doc["features"]
    assert [f["mask"] for f in feats] == sorted((f["mask"] for f in feats), reverse=True)
    names = json.loads({p.key: p.value for p in onnx.load(str(SK / f"{name}.onnx"))
                        .metadata_props}.get("neuromask.feature_names", "null"))
    if names is not None:
        assert {f["name"] for f in feats} == set(names)


def test_feature_names_file_and_a_wrong_count(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    model, row = str(SK / "logreg_iris.onnx"), str(SK / "logreg_iris.row.npy")
    res = CliRunner().invoke(app, ["explain", model, row, "-o", str(tmp_path / "o"), "-q",
                                   "--feature-names", str(names)])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "o" / "logreg_iris.row.json").read_text())
    assert {f["name"] for f in doc["features"]} == {"a", "b"}
    names.write_text("a\nb\nc\n")
    res = CliRunner().invoke(app, ["explain", model, row, "-o", str(tmp_path / "p"), "-q",
                                   "--feature-names", str(names)])
    assert res.exit_code == 1
    assert "3 feature names for 2 features" in res.output
    assert not (tmp_path / "p").exists()


def test_the_label_output_checks_the_top1_class(tmp_path: Path) -> None:
    """skl2onnx's binary SVC writes decision values [-s, s] whose larger column is not the
    label's class: the label output catches it and the CLI says so."""
    res = CliRunner().invoke(app, ["explain", str(SK / "breast_cancer_svc.onnx"),
                                   str(SK / "breast_cancer_svc.row.npy"), "-o",
                                   str(tmp_path / "o"), "-q"])
    assert res.exit_code == 0
    assert "label output says '0' but its probabilities rank '1' first" in res.output


def test_time_series_gets_a_series_plot(tmp_path: Path, rng: np.random.Generator) -> None:
    model = Path(__file__).resolve().parent.parent / "models" / "timeseries_conv1d.onnx"
    np.save(tmp_path / "s.npy", rng.standard_normal((24, 4)).astype(np.float32))
    res = CliRunner().invoke(app, ["explain", str(model), str(tmp_path / "s.npy"), "-o",
                                   str(tmp_path / "o"), "-q", "--steps", "5"])
    assert res.exit_code == 0, res.output
    from PIL import Image

    with Image.open(tmp_path / "o" / "s.series.png") as img:
        assert img.size[0] > 600


@pytest.mark.slow
def test_committed_sklearn_fixtures_are_what_the_tool_writes(tmp_path: Path) -> None:
    import importlib.util

    path = SK.parent.parent / "tools" / "make_sklearn_models.py"
    spec = importlib.util.spec_from_file_location("make_sklearn_models", path)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["-o", str(tmp_path)])
    for f in sorted(SK.iterdir()):
        assert (tmp_path / f.name).read_bytes() == f.read_bytes(), f.name
