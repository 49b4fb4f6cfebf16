"""A Triton model repository from any classifier: the instrumented model, served as it is.

`write_repository` writes `REPO/<name>/config.pbtxt` + `REPO/<name>/1/model.onnx`:

- `model.onnx` is the instrumented model (loss, d loss / d mask and probabilities in one run)
  made batch-polymorphic, because Triton's dynamic batcher hands the model any batch from 1 to
  `max_batch_size`, while `rewrite.instrument` pins the batch. `batch_loop` wraps the batch-1
  instrumented graph in an ONNX `Loop` over the leading axis (the body slices sample i, runs the
  graph, and the Loop stacks the per-sample outputs), so the file runs on any ONNX runtime.
- `config.pbtxt` is for Triton's onnxruntime backend (`backend: "onnxruntime"`): dynamic
  batching, the batch axis left out of the dims (Triton adds it when `max_batch_size > 0`), the
  per-sample target and loss as dims `[1]` reshaped to `[]` (Triton's way to batch a
  vector), and the model's NeuroMask metadata, preprocessing and labels as `parameters`
  (string values) so a client needs nothing but the server.
- `python_backend=True` writes the same repository for Triton's Python backend instead
  (`backend: "python"`, plus `1/model.py`, `PYTHON_MODEL` below): it runs the same
  `model.onnx` with onnxruntime, one session per model instance, and serves a dynamic batch
  by concatenating the requests, one run, and splitting the outputs. This is what the Triton
  binary inside `nvidia-pytriton` can serve (it ships only the Python backend).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import InputError
from .files import atomic_write
from .graph import load_model
from .preprocess import Preprocessing, model_labels, model_preprocessing

_PREFIX = "nm_b_"
_TRITON_TYPES: dict[int, str] = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.DOUBLE: "TYPE_FP64",
                 TensorProto.FLOAT16: "TYPE_FP16", TensorProto.INT64: "TYPE_INT64",
                 TensorProto.INT32: "TYPE_INT32", TensorProto.BOOL: "TYPE_BOOL"}
PARAM_PREFIX = "neuromask."


def _dims(vi: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in vi.type.tensor_type.shape.dim]


def batch_loop(model: onnx.ModelProto) -> onnx.ModelProto:
    """The batch-1 model `model` as a model over any batch: an ONNX Loop over axis 0.

    Every graph input and output must have a leading axis of size 1; the result has the same
    names with a symbolic `batch` axis. The weights move into the body graph: outer-scope
    values are not constants to onnxruntime's optimiser, which then fuses nothing.
    """
    g = model.graph
    init = {t.name for t in g.initializer}
    ins = [vi for vi in g.input if vi.name not in init]
    for vi in [*ins, *g.output]:
        d = _dims(vi)
        if not d or d[0] != 1:
            msg = f"batch_loop needs batch-1 inputs and outputs; {vi.name!r} has dims {d}"
            raise InputError(msg)
    ren = {vi.name: _PREFIX + vi.name for vi in [*ins, *g.output]}
    axes0, one, zero = "nm_loop_axes0", "nm_loop_one", "nm_loop_zero"
    it, cond_in, cond_out, i0, i1 = ("nm_loop_iter", "nm_loop_cond_in", "nm_loop_cond_out",
                                     "nm_loop_i0", "nm_loop_i1")
    body_nodes = [helper.make_node("Identity", [cond_in], [cond_out], name="nm_loop_cond"),
                  helper.make_node("Unsqueeze", [it, axes0], [i0], name="nm_loop_unsq"),
                  helper.make_node("Add", [i0, one], [i1], name="nm_loop_next")]
    for vi in ins:
        body_nodes.append(helper.make_node("Slice", [vi.name, i0, i1, axes0], [ren[vi.name]],
                                           name=f"nm_loop_slice_{vi.name}"))
    for node in g.node:
        n = onnx.NodeProto()
        n.CopyFrom(node)
        n.input[:] = [ren.get(v, v) for v in node.input]
        n.output[:] = [ren.get(v, v) for v in node.output]
        body_nodes.append(n)
    scan_outs = []
    for vi in g.output:
        item = f"{ren[vi.name]}_item"
        body_nodes.append(helper.make_node("Squeeze", [ren[vi.name], axes0], [item],
                                           name=f"nm_loop_squeeze_{vi.name}"))
        scan_outs.append(helper.make_tensor_value_info(
            item, vi.type.tensor_type.elem_type, _dims(vi)[1:]))
    consts = {name: numpy_helper.from_array(np.array(v, np.int64), name)
              for name, v in ((axes0, [0]), (one, [1]), (zero, 0))}
    body = helper.make_graph(  # weights live in the body: onnxruntime folds and fuses them
        body_nodes, "nm_loop_body",
        [helper.make_tensor_value_info(it, TensorProto.INT64, []),
         helper.make_tensor_value_info(cond_in, TensorProto.BOOL, [])],
        [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []), *scan_outs],
        initializer=[*g.initializer, consts[axes0], consts[one]],
        value_info=list(g.value_info))
    trip, shape = "nm_loop_trips", "nm_loop_shape"
    nodes = [helper.make_node("Shape", [ins[0].name], [shape], name="nm_loop_shape"),
             helper.make_node("Gather", [shape, zero], [trip], name="nm_loop_trips"),
             helper.make_node("Loop", [trip, ""], [vi.name for vi in g.output],
                              name="nm_loop", body=body)]

    def batched(vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type,
                                             ["batch", *_dims(vi)[1:]])

    outer = helper.make_graph(nodes, g.name or "neuromask_batched",
                              [batched(vi) for vi in ins], [batched(vi) for vi in g.output],
                              initializer=[consts[zero]])
    out = helper.make_model(outer, opset_imports=list(model.opset_import),
                            ir_version=model.ir_version, producer_name=model.producer_name,
                            producer_version=model.producer_version)
    out.doc_string = model.doc_string
    helper.set_model_props(out, {**{p.key: p.value for p in model.metadata_props},
                                 "neuromask.batch": "dynamic"})
    onnx.checker.check_model(out, full_check=True)
    return out


# --------------------------------------------------------------------------- config.pbtxt


def _quote(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 kept as it is)."""
    esc = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{esc}"'


def _tensor(vi: onnx.ValueInfoProto) -> str:
    etype = vi.type.tensor_type.elem_type
    if etype not in _TRITON_TYPES:
        msg = f"{vi.name!r} has element type {TensorProto.DataType.Name(etype)}, which Triton " \
              "configs here do not map"
        raise InputError(msg)
    dims = _dims(vi)[1:]
    body = f"name: {_quote(vi.name)}, data_type: {_TRITON_TYPES[etype]}, "
    if dims:
        return "{ " + body + f"dims: [ {', '.join(map(str, dims))} ] }}"
    return "{ " + body + "dims: [ 1 ], reshape: { shape: [ ] } }"


def config_pbtxt(name: str, model: onnx.ModelProto, *, backend: str = "onnxruntime",
                 max_batch_size: int = 8, instances: int = 1,
                 parameters: dict[str, str] | None = None) -> str:
    """Triton's model configuration (protobuf text format) for a batch-polymorphic model."""
    init = {t.name for t in model.graph.initializer}
    ins = [vi for vi in model.graph.input if vi.name not in init]
    lines = [f"name: {_quote(name)}", f"backend: {_quote(backend)}",
             f"max_batch_size: {max_batch_size}",
             "input [\n  " + ",\n  ".join(_tensor(vi) for vi in ins) + "\n]",
             "output [\n  " + ",\n  ".join(_tensor(vi) for vi in model.graph.output) + "\n]",
             "dynamic_batching { }",
             f"instance_group [ {{ count: {instances}, kind: KIND_CPU }} ]"]
    for key, value in (parameters or {}).items():
        lines.append(f"parameters {{ key: {_quote(key)}, value: {{ string_value: "
                     f"{_quote(value)} }} }}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the repository

PYTHON_MODEL = '''\
"""Triton Python-backend model written by neuromask-onnx: runs 1/model.onnx with onnxruntime.

A dynamic batch arrives as several requests: their inputs are concatenated on the batch axis,
run once, and the outputs split back. Tensors are reshaped to the ranks the session and the
config declare (Triton batches a per-sample scalar as dims [1]).
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# The stub's numpy bridge is built for numpy 1.x; under numpy 2 tensors cross by DLPack.
_DLPACK = int(np.__version__.split(".")[0]) >= 2


def _array(tensor):
    return np.from_dlpack(tensor) if _DLPACK else tensor.as_numpy()


def _tensor(name, value):
    if _DLPACK:
        return pb_utils.Tensor.from_dlpack(name, value)
    return pb_utils.Tensor(name, value)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("neuromask.threads", "1"))
        opts.log_severity_level = 3
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), opts,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [(i.name, len(i.shape)) for i in self.session.get_inputs()]
        self.outputs = [(o["name"], len(o["dims"]) + 1) for o in config["output"]]

    def execute(self, requests):
        feeds, sizes = {}, []
        for r in requests:
            for name, rank in self.inputs:
                a = _array(pb_utils.get_input_tensor_by_name(r, name))
                a = a.reshape(a.shape[0], *a.shape[1:rank]) if a.ndim > rank else a
                feeds.setdefault(name, []).append(a)
            sizes.append(feeds[self.inputs[0][0]][-1].shape[0])
        feeds = {k: np.concatenate(v) for k, v in feeds.items()}
        values = self.session.run([n for n, _ in self.outputs], feeds)
        responses, lo = [], 0
        for n in sizes:
            tensors = []
            for (name, rank), v in zip(self.outputs, values):
                part = np.ascontiguousarray(v[lo:lo + n])
                part = part.reshape(n, *([1] * (rank - part.ndim)), *part.shape[1:])
                tensors.append(_tensor(name, part))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            lo += n
        return responses
'''


def served_parameters(model: onnx.ModelProto, original: onnx.ModelProto,
                      preprocessing: Preprocessing | None,
                      labels: Sequence[str] | None) -> dict[str, str]:
    """The config parameters a client reads: NeuroMask metadata, preprocessing, labels."""
    import dataclasses

    params = {p.key: p.value for p in model.metadata_props if p.key.startswith(PARAM_PREFIX)}
    prep = preprocessing or model_preprocessing(original)
    if prep is not None:
        params["neuromask.preprocess"] = json.dumps(dataclasses.asdict(prep))
    names = list(labels) if labels is not None else model_labels(original)
    if names is not None:
        params["neuromask.labels"] = json.dumps(names, ensure_ascii=False)
    return params


def write_repository(model: onnx.ModelProto | str | Path, repo: str | Path, *,
                     name: str | None = None, max_batch_size: int = 8,
                     python_backend: bool = False, instances: int = 1,
                     preprocessing: Preprocessing | None = None,
                     labels: Sequence[str] | None = None, force: bool = False,
                     input_name: str | None = None, output_name: str | None = None,
                     input_shape: Sequence[int] | None = None, layout: str | None = None,
                     mask_axes: Sequence[int] | None = None, output_kind: str = "auto",
                     baseline: bool = True, objective: str = "probability") -> Path:
    """Instrument `model` and write it as the Triton model `REPO/<name>`; returns that dir.

    baseline: serve the `nm_baseline` input (default), so every --baseline works remotely
    (zero sends b = 0); False serves x * mask only (--baseline zero).
    objective: probability (default: what the default "areas" NeuroMask runs) or
    cross_entropy (the classic presets: reference, paper).
    """
    from .rewrite import instrument

    original = load_model(model)
    if name is None:
        name = Path(model).stem.split(".")[0] if isinstance(model, (str, Path)) else "model"
        name = re.sub(r"[^A-Za-z0-9_-]", "_", name) or "model"
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        msg = f"Triton model name {name!r} must be letters, digits, '_', '-' or '.'"
        raise InputError(msg)
    if max_batch_size < 1:
        msg = f"--max-batch-size must be at least 1, got {max_batch_size}"
        raise InputError(msg)
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        msg = f"{str(repo)!r} exists and is not a directory; give a repository directory"
        raise InputError(msg)
    target = repo / name
    files = [target / "config.pbtxt", target / "1" / "model.onnx", target / "1" / "model.py"]
    if not force and any(f.exists() for f in files):
        msg = f"{str(target)!r} already holds a model; pass --force to overwrite it"
        raise InputError(msg)
    one = instrument(original, input_name=input_name, output_name=output_name, batch_size=1,
                     input_shape=input_shape, layout=layout, mask_axes=mask_axes,
                     output_kind=output_kind, baseline=baseline,  # type: ignore[arg-type]
                     objective=objective)  # type: ignore[arg-type]
    served = batch_loop(one)
    params = served_parameters(served, original, preprocessing, labels)
    text = config_pbtxt(name, served, backend="python" if python_backend else "onnxruntime",
                        max_batch_size=max_batch_size, instances=instances, parameters=params)
    (target / "1").mkdir(parents=True, exist_ok=True)
    atomic_write(files[1], served.SerializeToString())
    if python_backend:
        atomic_write(files[2], PYTHON_MODEL.encode())
    else:
        files[2].unlink(missing_ok=True)
    atomic_write(files[0], text.encode())
    return target
