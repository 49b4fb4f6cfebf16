"""The model's contract, decided once: which input and output, what the output holds, the
layout and the mask axes, the shapes, the input's dtype, and whether the exact gradient exists.

`resolve(model, ...) -> Spec` makes every decision and raises every user error about them (one
text each, here); `instrument` (through `analyse`), `NeuroMask` and `Classifier` read the Spec
instead of building a model to read metadata back. The user's choices travel with it as
`ModelOptions`, so an instrumentation at another batch size or input shape decides the same
way. `describe_input` is the same input as the file readers see it (`InputSpec`).

One layout detector, `detect_layout`, with an explicit purpose: "mask" names the axes a mask
varies over (NF, NTC, NCHW, NHWC, NCDHW; ranks without a default are an error, asking for
--mask-axes), "read" says how files are read into the input (NCHW or NHWC for images, N plus
generic letters otherwise: NA, NAB, ...). Both tell NCHW from NHWC by the channel count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto

from .errors import InputError, ModelContractError, UnsupportedOpError
from .graph import FLOAT_TYPES, Graph, Shape, graph_inputs, input_dims, load_model, prepare
from .heads import OutputKind, find_logits
from .onnxml import holds_probabilities, zipmap_sources
from .precision import is_half, upcast_half

Gradient = Literal["auto", "exact", "estimate"]
Purpose = Literal["mask", "read"]
NP_DTYPES: dict[int, type[np.floating]] = {
    TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16}


@dataclass(frozen=True)
class ModelOptions:
    """What the user chose about the model (None / "auto": decide from the model)."""

    input_name: str | None = None
    output_name: str | None = None
    output_kind: OutputKind = "auto"
    layout: str | None = None
    mask_axes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.mask_axes is not None:
            object.__setattr__(self, "mask_axes", tuple(int(a) for a in self.mask_axes))


@dataclass(frozen=True)
class Spec:
    """Every decision about a model, at one batch size; `instrument` stamps it as metadata."""

    input_name: str
    output_name: str
    """The output whose scores are explained (a ZipMap's source tensor for scikit-learn)."""
    input_shape: Shape
    """Batch first, every axis pinned."""
    mask_shape: Shape
    mask_axes: tuple[int, ...]
    layout: str
    output_kind: str
    """What the output holds: logits, probabilities, or softmax / log_softmax / sigmoid (the
    loss head then reads `logits_name`, the scores before that final op)."""
    num_classes: int
    logits_name: str
    dims: tuple[int | None, ...] = ()
    """The input's declared dims, batch first; None where dynamic."""
    dtype: int = TensorProto.FLOAT
    """The element type the instrumented model takes (float32 for half models)."""
    gradient: Literal["exact", "estimate"] = "exact"
    no_rule: tuple[str, str] | None = None
    """(op, node) without a rule, where the gradient fell back to the estimate."""
    options: ModelOptions = field(default_factory=ModelOptions)

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    @property
    def fixed_batch(self) -> int | None:
        return self.dims[0] if self.dims else None

    @property
    def dynamic(self) -> bool:
        """Whether a non-batch axis is dynamic (each input shape is instrumented on its own)."""
        return any(d is None for d in self.dims[1:])

    @property
    def np_dtype(self) -> type[np.floating]:
        return NP_DTYPES.get(self.dtype, np.float32)

    @property
    def classes(self) -> int:
        """Columns of the probabilities: a single score is a two-class problem."""
        return max(self.num_classes, 2)

    def summary(self) -> str:
        """The decisions, as the instrumented model's doc string names them."""
        return (f"Spec(input_name={self.input_name!r}, output_name={self.output_name!r}, "
                f"input_shape={self.input_shape!r}, mask_shape={self.mask_shape!r}, "
                f"mask_axes={self.mask_axes!r}, layout={self.layout!r}, "
                f"output_kind={self.output_kind!r}, num_classes={self.num_classes!r}, "
                f"logits_name={self.logits_name!r})")


# --------------------------------------------------------------------------- the decisions


def _typed(vis: Sequence[onnx.ValueInfoProto]) -> list[tuple[str, str]]:
    return [(v.name, TensorProto.DataType.Name(v.type.tensor_type.elem_type)) for v in vis]


def pick_input(m: onnx.ModelProto, name: str | None) -> onnx.ValueInfoProto:
    """The input to explain: the named one, else the model's only input; it must be float."""
    real = graph_inputs(m)
    if name is not None:
        vi = next((v for v in real if v.name == name), None)
        if vi is None:
            msg = f"model has no input {name!r}; its inputs are {[v.name for v in real]}"
            raise ModelContractError(msg)
    else:
        if not any(v.type.tensor_type.elem_type in FLOAT_TYPES for v in real):
            msg = (f"model has no float input to mask (inputs: {_typed(real)}): only float "
                   "inputs can be masked, and these are not float")
            raise ModelContractError(msg)
        if len(real) > 1:
            msg = (f"model has {len(real)} inputs {[v.name for v in real]}; "
                   "name the one to explain with --input")
            raise ModelContractError(msg)
        vi = real[0]
    etype = vi.type.tensor_type.elem_type
    if etype not in FLOAT_TYPES:
        msg = (f"input {vi.name!r} is {TensorProto.DataType.Name(etype)}, not float; "
               "only float inputs can be masked (pick another with --input)")
        raise ModelContractError(msg)
    return vi


def pick_output(m: onnx.ModelProto, name: str | None) -> str:
    """The output holding the scores: the named one (a ZipMap's source), else the first float
    output, else the tensor a scikit-learn ZipMap maps."""
    outs = list(m.graph.output)
    if name is not None:
        if name not in [o.name for o in outs]:
            msg = f"model has no output {name!r}; its outputs are {[o.name for o in outs]}"
            raise ModelContractError(msg)
        zipped = {v: k for k, v in zipmap_sources(m).items()}
        return zipped.get(name, name)
    floats = [o for o in outs if o.type.tensor_type.elem_type in FLOAT_TYPES]
    sources = zipmap_sources(m)
    if not floats and sources:  # skl2onnx / onnxmltools: probabilities as a ZipMap of maps
        return next(iter(sources))
    if not floats:
        msg = f"model has no float output (outputs: {[o.name for o in outs]}); pass --output"
        raise ModelContractError(msg)
    return str(floats[0].name)


def resolve_shape(dims: Sequence[int | str | None], batch_size: int,
                  input_shape: Sequence[int] | None, name: str) -> Shape:
    """Pin the batch axis to `batch_size` and every other axis from the model or the user."""
    if input_shape is not None:
        if len(input_shape) == len(dims) - 1:
            return (batch_size, *map(int, input_shape))
        if len(input_shape) == len(dims):
            return (batch_size, *map(int, input_shape[1:]))
        msg = (f"--input-shape {list(input_shape)} does not fit input {name!r} of rank "
               f"{len(dims)} (shape {list(dims)})")
        raise InputError(msg)
    if not dims:
        msg = f"input {name!r} declares no shape; pass --input-shape"
        raise ModelContractError(msg)
    if isinstance(dims[0], int) and dims[0] > 0 and dims[0] != batch_size:
        msg = (f"input {name!r} has a fixed batch size of {dims[0]} (the exporter baked it "
               f"in), so the model cannot run batches of {batch_size}; use batch size "
               f"{dims[0]} or re-export with a dynamic batch axis")
        raise ModelContractError(msg)
    rest = dims[1:]
    if not all(isinstance(d, int) and d > 0 for d in rest):
        msg = (f"input {name!r} has dynamic dimensions {list(dims)}; pass the size with "
               "--input-shape (without the batch axis), e.g. --input-shape 3,224,224")
        raise ModelContractError(msg)
    return (batch_size, *rest)  # type: ignore[arg-type]


def known_dims(model: onnx.ModelProto, name: str) -> tuple[int | None, ...]:
    """The input's dims, batch first, None where dynamic."""
    return tuple(d if isinstance(d, int) and d > 0 else None for d in input_dims(model, name))


_MASK_NAMES = {2: "NF", 3: "NTC", 5: "NCDHW"}


def detect_layout(dims: Sequence[int | None], layout: str | None, name: str, *,
                  purpose: Purpose) -> str:
    """The input's layout: the user's (checked against the rank), else detected.

    purpose "mask": NF, NTC, NCHW/NHWC or NCDHW, and a layout the user gives must name C (the
    mask varies over the other axes); "read": NCHW/NHWC for rank 4, else N and generic letters.
    """
    rank = len(dims)
    if layout:
        lay = layout.upper()
        if len(lay) != rank or lay[0] != "N" or (purpose == "mask" and "C" not in lay):
            need = "N first and a C" if purpose == "mask" else "N first"
            msg = (f"--layout {layout} does not fit input {name!r} of rank {rank} (shape "
                   f"{list(dims)}): give one letter per axis, {need}")
            raise InputError(msg)
        return lay
    if rank == 4:
        def small(d: int | None) -> bool:
            return d is not None and d <= 4

        if small(dims[1]) and not small(dims[3]):
            return "NCHW"
        if small(dims[3]) and not small(dims[1]):
            return "NHWC"
        msg = (f"cannot tell whether input {name!r} with shape {list(dims)} is NCHW or NHWC; "
               "pass --layout NCHW or --layout NHWC")
        raise ModelContractError(msg)
    if purpose == "read":
        return "N" + "ABDEFG"[:rank - 1] if rank > 1 else "N"
    if rank in _MASK_NAMES:
        return _MASK_NAMES[rank]
    msg = f"no default mask for input {name!r} of rank {rank}; pass --mask-axes"
    raise ModelContractError(msg)


def choose_mask_axes(shape: Shape, opts: ModelOptions, name: str) -> tuple[tuple[int, ...], str]:
    """(axes the mask varies over, the layout name): the user's axes ("custom"), else every
    axis of the layout but N and C."""
    if opts.mask_axes is not None:
        axes = tuple(sorted(a + len(shape) if a < 0 else a for a in opts.mask_axes))
        if any(a <= 0 or a >= len(shape) for a in axes):
            msg = f"--mask-axes {list(opts.mask_axes)} must name non-batch axes of {list(shape)}"
            raise InputError(msg)
        return axes, "custom"
    lay = detect_layout(shape, opts.layout, name, purpose="mask")
    return tuple(i for i, c in enumerate(lay) if c not in "NC"), lay


def _chosen_input(model: onnx.ModelProto, name: str | None) -> onnx.ValueInfoProto | None:
    """The named input, else the only one; None if ambiguous (`pick_input` says so)."""
    real = graph_inputs(model)
    return next((v for v in real if v.name == name), real[0] if len(real) == 1 else None)


def default_batch(model: onnx.ModelProto, input_name: str | None) -> int:
    """The batch size a model can be resolved at: the input's fixed one, else 1."""
    vi = _chosen_input(model, input_name)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return 1
    dims = vi.type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].dim_value > 0 else 1


def dynamic_shape(model: onnx.ModelProto, input_name: str | None,
                  input_shape: Sequence[int] | None) -> tuple[int, ...] | None:
    """`input_shape` where the chosen input has dynamic non-batch dims, else None (a static
    model is always resolved at its own shape)."""
    if input_shape is None:
        return None
    vi = _chosen_input(model, input_name)
    if vi is None:
        return None
    dims = input_dims(model, vi.name)
    dynamic = any(not (isinstance(d, int) and d > 0) for d in dims[1:])
    return tuple(int(d) for d in input_shape) if dynamic else None


# --------------------------------------------------------------------------- resolve


def analyse(model: onnx.ModelProto, opts: ModelOptions, batch_size: int,
            input_shape: Sequence[int] | None, *, check_gradient: bool,
            ) -> tuple[Spec, Graph]:
    """The Spec and the prepared graph (of the float32 copy, for a half model).

    model: as `graph.load_model` returns it (checked; never modified here). check_gradient:
    raise UnsupportedOpError where an op on the input-to-output path has no rule (before the
    output is looked at, as `instrument` always did)."""
    if batch_size < 1:
        msg = f"batch size must be at least 1, got {batch_size}"
        raise InputError(msg)
    if is_half(model):  # the exact float32 copy (precision.py)
        m = upcast_half(model)
    else:
        m = onnx.ModelProto()
        m.CopyFrom(model)  # `prepare` pins the input's dims in place
    original = model
    x_vi = pick_input(m, opts.input_name)
    x = x_vi.name
    out = pick_output(m, opts.output_name)
    dims = known_dims(original, x)  # before `prepare` pins them
    shape = resolve_shape(input_dims(m, x), batch_size, input_shape, x)
    axes, lay = choose_mask_axes(shape, opts, x)
    mshape = tuple(d if (i == 0 or i in axes) else 1 for i, d in enumerate(shape))
    g = prepare(m, {x: shape})
    if check_gradient:
        from .reverse import check_supported, marked_values, path_nodes

        check_supported(path_nodes(g.nodes, [x], [out], g), marked_values(g.nodes, [x], g))
    logits, kind = find_logits(g, out, opts.output_kind)
    if (kind == "logits" and opts.output_kind == "auto" and out in zipmap_sources(m)
            and holds_probabilities(g.nodes, out)):
        kind = "probabilities"  # a classifier's probability tensor: it feeds a ZipMap
    zs = g.shape(logits)
    if zs[0] != batch_size:
        msg = f"output {out!r} has shape {list(zs)}, which has no batch axis first"
        raise ModelContractError(msg)
    k = int(np.prod(zs[1:]))
    spec = Spec(x, out, shape, mshape, axes, lay, kind, k, logits, dims,
                x_vi.type.tensor_type.elem_type, options=opts)
    return spec, g


def check_gradient(gradient: str, flag: str = "gradient") -> None:
    """Refuse a gradient mode other than auto, exact or estimate (`flag` names it)."""
    if gradient not in ("auto", "exact", "estimate"):
        msg = f"{flag} must be auto, exact or estimate, got {gradient!r}"
        raise InputError(msg)


def resolve(model: onnx.ModelProto | str | Path, *, input_name: str | None = None,
            output_name: str | None = None, input_shape: Sequence[int] | None = None,
            layout: str | None = None, mask_axes: Sequence[int] | None = None,
            output_kind: OutputKind = "auto", gradient: Gradient = "exact",
            batch_size: int | None = None) -> Spec:
    """Every decision about `model`, made once (see the module docstring).

    input_shape: the input's shape without the batch axis, for dynamic models; batch_size:
    the batch the Spec's shapes are given at (default: the input's fixed batch, else 1).
    gradient: "exact" raises UnsupportedOpError where an op on the path has no rule; "auto"
    falls back to "estimate" there (`no_rule` says which op); "estimate" checks nothing.
    """
    check_gradient(gradient)
    opts = ModelOptions(input_name, output_name, output_kind, layout,
                        None if mask_axes is None else tuple(mask_axes))
    return decide(load_model(model), opts, gradient, batch_size, input_shape)


def decide(m: onnx.ModelProto, opts: ModelOptions, gradient: Gradient = "exact",
           batch_size: int | None = None, input_shape: Sequence[int] | None = None) -> Spec:
    """`resolve` for a model `graph.load_model` has already read and checked."""
    check_gradient(gradient)
    n = default_batch(m, opts.input_name) if batch_size is None else batch_size
    if gradient == "estimate":
        spec, _ = analyse(m, opts, n, input_shape, check_gradient=False)
        return replace(spec, gradient="estimate")
    try:
        spec, _ = analyse(m, opts, n, input_shape, check_gradient=True)
    except UnsupportedOpError as exc:
        if gradient == "exact":
            raise
        spec, _ = analyse(m, opts, n, input_shape, check_gradient=False)
        return replace(spec, gradient="estimate", no_rule=(exc.op_type, exc.node_name))
    return spec


# --------------------------------------------------------------------------- file readers


@dataclass(frozen=True)
class InputSpec:
    """The input to explain as the file readers see it (`preprocess.load_inputs`)."""

    name: str
    dims: tuple[int | None, ...]
    """Full dims, batch first; None where dynamic."""
    layout: str
    """NCHW, NHWC or the generic N... for non-image inputs."""

    @property
    def is_image(self) -> bool:
        return self.layout in ("NCHW", "NHWC")

    @property
    def channels(self) -> int | None:
        return self.dims[self.layout.index("C")] if self.is_image else None

    @property
    def hw(self) -> tuple[int | None, int | None]:
        return (self.dims[self.layout.index("H")], self.dims[self.layout.index("W")])


def describe_input(model: onnx.ModelProto, input_name: str | None = None,
                   layout: str | None = None) -> InputSpec:
    """Pick the input to explain and read its dims and layout from the model."""
    vi = pick_input(model, input_name)
    dims = known_dims(model, vi.name)
    return InputSpec(vi.name, dims, detect_layout(dims, layout, vi.name, purpose="read"))
