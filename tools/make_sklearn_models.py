"""Write the scikit-learn / ONNX-ML fixtures in models/sklearn/ (skl2onnx, seeded training).

    python tools/make_sklearn_models.py          # rewrites models/sklearn/*; name, size, sha256
    python tools/make_sklearn_models.py -o DIR   # the same files in DIR, plus a copy of
                                                 # models/timeseries_conv1d.onnx (README demo)

Each fixture is a real scikit-learn pipeline trained on a dataset scikit-learn ships (or, for
the known-answer forest, on seeded synthetic data where only features 0-2 carry the label),
converted by skl2onnx with its defaults (probabilities as a ZipMap), with the dataset's feature
names in the metadata (`neuromask.feature_names`) and one sample row beside it
(`<name>.row.npy`, float32 [F]). `logreg_iris.onnx` is onnxruntime's own sample, copied from
the installed onnxruntime wheel (onnxruntime/datasets/), unchanged. models/README.md lists
them. Training is deterministic (fixed random_state), so reruns write the same files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

OUT = Path(__file__).resolve().parent.parent / "models" / "sklearn"
OPSET = {"": 18, "ai.onnx.ml": 3}


def _export(est: Any, x: np.ndarray, names: list[str], doc: str) -> onnx.ModelProto:
    from skl2onnx import to_onnx

    with warnings.catch_warnings():  # skl2onnx reads SVC.probA_, deprecated in sklearn 1.9
        warnings.simplefilter("ignore", FutureWarning)
        m = to_onnx(est, x[:1].astype(np.float32), target_opset=OPSET)
    # skl2onnx lists the opsets in hash order: sort them so that reruns write the same bytes.
    imports = sorted(m.opset_import, key=lambda o: o.domain)
    del m.opset_import[:]
    m.opset_import.extend(imports)
    helper.set_model_props(m, {"neuromask.feature_names": json.dumps(names)})
    m.doc_string = doc
    return m


def iris_logreg() -> tuple[onnx.ModelProto, np.ndarray]:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    d = load_iris()
    est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(d.data, d.target)
    return _export(est, d.data, list(d.feature_names), "iris: StandardScaler + "
                   "LogisticRegression"), d.data[120]


def wine_mlp() -> tuple[onnx.ModelProto, np.ndarray]:
    from sklearn.datasets import load_wine
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    d = load_wine()
    est = make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=2000, random_state=0))
    est.fit(d.data, d.target)
    return _export(est, d.data, list(d.feature_names), "wine: StandardScaler + "
                   "MLPClassifier(16)"), d.data[10]


def breast_cancer_svc() -> tuple[onnx.ModelProto, np.ndarray]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    d = load_breast_cancer()
    est = make_pipeline(StandardScaler(), SVC(kernel="rbf", C=1.0)).fit(d.data, d.target)
    return _export(est, d.data, list(d.feature_names), "breast_cancer: StandardScaler + "
                   "SVC(rbf), decision values"), d.data[0]


def digits_logreg() -> tuple[onnx.ModelProto, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    d = load_digits()
    est = make_pipeline(Normalizer(), LogisticRegression(max_iter=2000)).fit(d.data, d.target)
    names = [f"pixel {i // 8},{i % 8}" for i in range(64)]
    return _export(est, d.data, names, "digits: Normalizer(L2) + LogisticRegression"), d.data[5]


def known_answer_data(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8 standard-normal features; the label is 1 iff x0 > 0 and x1 > 0 and x2 < 0 (features
    3-7 are noise). At the zero baseline (the data mean) each of x0, x1, x2 sits on its
    threshold, so a mask must keep all three to keep class 1 and needs none of the others."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8))
    y = ((x[:, 0] > 0) & (x[:, 1] > 0) & (x[:, 2] < 0)).astype(np.int64)
    return x, y


def forest_known_answer() -> tuple[onnx.ModelProto, np.ndarray]:
    from sklearn.ensemble import RandomForestClassifier

    x, y = known_answer_data()
    est = RandomForestClassifier(n_estimators=10, max_depth=8, class_weight="balanced",
                                 random_state=0).fit(x, y)
    row = np.array([1.2, 0.9, -1.1, 0.8, -0.9, 1.0, -1.2, 0.7])  # class 1, noise features large
    return _export(est, x, [f"x{i}" for i in range(8)], "known answer: RandomForest(10, depth 8)"
                   " on x0 > 0 and x1 > 0 and x2 < 0; features 3-7 are noise"), row


MODELS: dict[str, Callable[[], tuple[onnx.ModelProto, np.ndarray]]] = {
    "iris_logreg": iris_logreg, "wine_mlp": wine_mlp, "breast_cancer_svc": breast_cancer_svc,
    "digits_logreg": digits_logreg, "forest_known_answer": forest_known_answer,
}


def ort_sample() -> Path:
    import onnxruntime

    return Path(onnxruntime.__file__).parent / "datasets" / "logreg_iris.onnx"


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, default=OUT, help="output directory")
    out = ap.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in MODELS.items():
        model, row = build()
        (out / f"{name}.onnx").write_bytes(model.SerializeToString(deterministic=True))
        np.save(out / f"{name}.row.npy", row.astype(np.float32))
        written.append(out / f"{name}.onnx")
    shutil.copyfile(ort_sample(), out / "logreg_iris.onnx")
    np.save(out / "logreg_iris.row.npy", np.array([5.1, 3.5], np.float32))
    written.append(out / "logreg_iris.onnx")
    if out.resolve() != OUT.resolve():
        shutil.copyfile(OUT.parent / "timeseries_conv1d.onnx", out / "timeseries_conv1d.onnx")
    for p in written:
        sha = hashlib.sha256(p.read_bytes()).hexdigest()
        sys.stdout.write(f"{p.name:<28}{p.stat().st_size:>8} B  {sha}\n")


if __name__ == "__main__":
    main()
