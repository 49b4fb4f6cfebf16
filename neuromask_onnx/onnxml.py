"""What an ONNX-ML export (skl2onnx, onnxmltools) says about its outputs, classes and features.

skl2onnx and onnxmltools write a classifier's probabilities as a `ZipMap` (a sequence of maps,
which no gradient can flow through) beside an integer or string label output. We explain the
probability tensor that feeds the ZipMap; the label output is used for one check only: that
its class agrees with the top-1 class of those probabilities (`top1_disagreements`). Class
names come from the ZipMap's class labels; feature names from the model's metadata
(`neuromask.feature_names` or `feature_names`: a JSON list, or names separated by commas).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .graph import FLOAT_TYPES

_FEATURE_KEYS = ("neuromask.feature_names", "feature_names")


def zipmap_sources(model: onnx.ModelProto) -> dict[str, str]:
    """{probability tensor: ZipMap output} for every ZipMap whose output the graph returns."""
    outs = {o.name for o in model.graph.output}
    return {n.input[0]: n.output[0] for n in model.graph.node
            if n.op_type == "ZipMap" and n.domain == "ai.onnx.ml" and n.output[0] in outs}


_PROBABILITY_TRANSFORMS = (b"LOGISTIC", b"SOFTMAX", b"SOFTMAX_ZERO", "LOGISTIC", "SOFTMAX",
                           "SOFTMAX_ZERO")


def holds_probabilities(nodes: Sequence[onnx.NodeProto], name: str) -> bool:
    """Whether value `name` (fed to a ZipMap) holds probabilities rather than scores.

    Walks back through Cast/Identity/Reshape to its producer: an L1 Normalizer, a tree
    ensemble classifier, a LinearClassifier with a logistic or softmax transform, or an
    SVMClassifier with Platt probabilities (prob_a) gives probabilities. Anything else
    (an SVM's decision values, sklearn's one-vs-rest vote arithmetic) gives scores, which the
    loss treats as logits.
    """
    producer = {o: n for n in nodes for o in n.output}
    node = producer.get(name)
    while node is not None and node.op_type in ("Cast", "Identity", "Reshape") and (
            node.domain in ("", "ai.onnx")):
        node = producer.get(node.input[0])
    if node is None or node.domain != "ai.onnx.ml":
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Normalizer":
        return attrs.get("norm") in (b"L1", "L1")
    if node.op_type in ("TreeEnsembleClassifier", "TreeEnsemble"):
        return True
    if node.op_type == "LinearClassifier":
        return attrs.get("post_transform") in _PROBABILITY_TRANSFORMS
    if node.op_type == "SVMClassifier":
        return bool(attrs.get("prob_a"))
    return False


def _zipmap(model: onnx.ModelProto) -> onnx.NodeProto | None:
    srcs = set(zipmap_sources(model).values())
    return next((n for n in model.graph.node if n.op_type == "ZipMap" and n.output[0] in srcs),
                None)


def class_labels(model: onnx.ModelProto) -> list[str] | None:
    """The ZipMap's class labels in probability-column order, as strings (None without one)."""
    node = _zipmap(model)
    if node is None:
        return None
    for a in node.attribute:
        if a.name in ("classlabels_strings", "classlabels_int64s"):
            values = helper.get_attribute_value(a)
            return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
    return None


def label_output(model: onnx.ModelProto) -> str | None:
    """The graph output holding the predicted label (a rank-1 integer or string tensor)."""
    if _zipmap(model) is None:
        return None
    for o in model.graph.output:
        t = o.type.tensor_type
        if o.type.HasField("tensor_type") and t.elem_type not in FLOAT_TYPES and (
                not t.HasField("shape") or len(t.shape.dim) == 1):
            return str(o.name)
    return None


def feature_names(model: onnx.ModelProto) -> list[str] | None:
    props = {p.key: p.value for p in model.metadata_props}
    for key in _FEATURE_KEYS:
        raw = props.get(key)
        if raw is None:
            continue
        try:
            names: Any = json.loads(raw)
        except ValueError:
            names = [t.strip() for t in raw.split(",")]
        if isinstance(names, list) and names:
            return [str(v) for v in names]
    return None


def top1_disagreements(model: onnx.ModelProto, input_name: str, x: np.ndarray,
                       probs: np.ndarray) -> list[str]:
    """One note per row of x whose label output is not the argmax of the probabilities."""
    from .runtime import session

    out, labels = label_output(model), class_labels(model)
    if out is None or labels is None:
        return []
    sess = session(model)
    fixed = sess.get_inputs()[0].shape[0]
    rows: list[Any] = []
    step = fixed if isinstance(fixed, int) and fixed > 0 else len(x)
    for lo in range(0, len(x), step):
        part = x[lo:lo + step]
        pad = np.concatenate([part, np.repeat(part[-1:], step - len(part), axis=0)])
        rows.extend(list(sess.run([out], {input_name: pad})[0][: len(part)]))
    notes = []
    for i, (got, p) in enumerate(zip(rows, probs, strict=True)):
        name = got.decode() if isinstance(got, bytes) else str(got)
        top = labels[int(np.argmax(p))]
        if name != top:
            notes.append(f"input {i}: the model's label output says {name!r} but its "
                         f"probabilities rank {top!r} first; the probabilities are explained")
    return notes


def feature_order(mask: np.ndarray, names: Sequence[str] | None) -> list[dict[str, Any]]:
    """Features by importance (mask value, highest first; ties by index)."""
    flat = np.asarray(mask, np.float64).ravel()
    order = np.argsort(-flat, kind="stable")
    return [{"index": int(i), "name": names[i] if names is not None and i < len(names)
             else f"feature {int(i)}", "mask": float(flat[i])} for i in order]
