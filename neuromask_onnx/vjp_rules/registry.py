"""Vector-Jacobian rules: one function per ONNX op, emitting standard ONNX ops only.

A rule receives the emitter, the primal node, the incoming gradient `gy` (one per output
for multi-output rules) and `needs`, which of the node's inputs need a gradient (`Needs`, as
PyTorch's `ctx.needs_input_grad`), and returns one gradient name per node input, `None` where
the input gets no gradient (integer, shape or constant operands, or one `needs` leaves out).
A rule reads no driver state: one that hands part of its work to another rule (an unfused
com.microsoft op, a quantized op's float equivalent) passes that rule an explicit `Needs`.

Rules read primal values by name from the graph; they never recompute the forward pass
except where an op hides what the gradient needs (MaxPool's argmax indices). Shapes are
static: `graph.prepare` pinned and folded them.

Conventions at kinks follow PyTorch: Relu'(0) = 0, Clip and HardSigmoid pass no gradient at
their bounds, MaxPool routes to the first maximal element, Max/Min/ReduceMax split the gradient
evenly between ties.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from ..graph import Emitter

Grads = Sequence[str | None]


@dataclass(frozen=True)
class Needs:
    """Which inputs of one node need a gradient (the driver's values that depend on `wrt`).

    `needs[i]` asks by input index (False past the end and for an absent optional input),
    `name in needs` by value name; a value read at two indices is needed at both. For a node
    with subgraphs the inputs are `control_flow.all_inputs`: its outer-scope reads follow.
    """

    inputs: tuple[str, ...]
    names: frozenset[str]

    @classmethod
    def of(cls, inputs: Iterable[str], wanted: Container[str]) -> Needs:
        """The inputs among `inputs` that are in `wanted`."""
        ins = tuple(inputs)
        return cls(ins, frozenset(i for i in ins if i and i in wanted))

    def __getitem__(self, index: int) -> bool:
        return index < len(self.inputs) and self.inputs[index] in self.names

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __bool__(self) -> bool:
        return bool(self.names)

    def moved_to(self, inputs: Sequence[str]) -> Needs:
        """The same needs, index by index, of a node reading `inputs` in place of these (a
        rule that hands its work to another rule on a rewritten node)."""
        return Needs.of(inputs, {n for k, n in enumerate(inputs) if self[k]})


VjpRule = Callable[[Emitter, onnx.NodeProto, Sequence[str | None], Needs], Grads]
VJP_RULES: dict[str, VjpRule] = {}

# Values computed by these ops carry no gradient even when their inputs depend on the mask:
# their outputs are integers, booleans or piecewise constants.
ZERO_GRAD_OPS = frozenset({
    "Shape", "Size", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And",
    "Or", "Xor", "ArgMax", "ArgMin", "Sign", "Floor", "Ceil", "Round", "IsNaN", "IsInf",
    "NonZero", "ConstantOfShape", "EyeLike", "RandomNormalLike", "RandomUniformLike",
    "Bernoulli", "OneHot", "BitShift", "Hardmax",
    # ONNX-ML ops outside the default domain are keyed "domain::op_type" (see `rule_key`).
    "ai.onnx.ml::Binarizer", "ai.onnx.ml::LabelEncoder", "ai.onnx.ml::OneHotEncoder",
})

# Operands (by input index) that the op reads only for their type or as shape / index /
# option data: the output is locally constant in them, so their gradient is zero even when
# they are computed from the mask (function-expanded graphs compute CastLike's `like` and
# Dropout's ratio from the data). The driver passes them over where a rule returns None.
NONDIFF_OPERANDS: dict[str, frozenset[int]] = {
    "CastLike": frozenset({1}),  # `target_type`: only its element type is read
    "Dropout": frozenset({1, 2}),  # ratio, training_mode: constants where they matter
    "Reshape": frozenset({1}), "Expand": frozenset({1}), "Tile": frozenset({1}),
    "Squeeze": frozenset({1}), "Unsqueeze": frozenset({1}), "Split": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}), "Pad": frozenset({1, 3}), "CumSum": frozenset({1}),
    "CumProd": frozenset({1}), "Compress": frozenset({1}), "DFT": frozenset({1, 2}),
    "TensorScatter": frozenset({2}), "STFT": frozenset({1, 3}),
    "Gather": frozenset({1}), "GatherElements": frozenset({1}), "GatherND": frozenset({1}),
    "TopK": frozenset({1}), "ScatterElements": frozenset({1}), "ScatterND": frozenset({1}),
    "ReduceSum": frozenset({1}), "ReduceMean": frozenset({1}), "ReduceMax": frozenset({1}),
    "ReduceMin": frozenset({1}), "ReduceProd": frozenset({1}), "ReduceL1": frozenset({1}),
    "ReduceL2": frozenset({1}), "ReduceSumSquare": frozenset({1}),
    "ReduceLogSum": frozenset({1}), "ReduceLogSumExp": frozenset({1}),
}


# Ops whose first output is an integer tensor that still carries a gradient: a quantized
# value, differentiated as if its integers were reals (the rules in `quant` define the units:
# d loss / d q, one quantization step at a time). Every other integer value carries none.
INTEGER_GRAD_OPS = frozenset({
    "QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
    "MatMulInteger",
})


# Ops whose outputs are piecewise constant in the input but whose jumps carry the model's
# whole decision (tree ensembles): their exact gradient is zero almost everywhere, so the mask
# gradient is estimated from model runs instead (`neuromask_onnx.estimate`).
NO_GRADIENT_OPS = frozenset({
    "ai.onnx.ml::TreeEnsembleClassifier", "ai.onnx.ml::TreeEnsembleRegressor",
    "ai.onnx.ml::TreeEnsemble",
})


def rule_key(node: onnx.NodeProto) -> str:
    """The registry key of a node: its op type, prefixed with `domain::` outside onnx's own.

    onnxruntime's contrib ops reuse onnx names (com.microsoft Gelu next to onnx Gelu-20), so
    a rule for an op of another domain is registered as e.g. `com.microsoft::FusedConv`; the
    same spelling `neuromask ops` prints.
    """
    if node.domain in ("", "ai.onnx"):
        return node.op_type
    return f"{node.domain}::{node.op_type}"


def vjp_rule(*op_types: str, multi_output: bool = False) -> Callable[[Callable[..., Grads]],
                                                                     Callable[..., Grads]]:
    """Register `fn(op, node, gy, needs)` for `op_types`; single-output rules receive `gy` as
    a plain name, multi-output ones (`multi_output=True`) the list `gys`."""

    def register(fn: Callable[..., Grads]) -> Callable[..., Grads]:
        def rule(op: Emitter, node: onnx.NodeProto, gys: Sequence[str | None],
                 needs: Needs) -> Grads:
            if multi_output:
                return fn(op, node, gys, needs)
            if any(g is not None for g in gys[1:]):
                msg = f"{node.op_type} passes no gradient from its output 2 or later"
                raise NotImplementedError(msg)
            assert gys[0] is not None
            return fn(op, node, gys[0], needs)

        for t in op_types:
            if t in VJP_RULES:
                msg = f"a VJP rule for {t} is already registered"
                raise ValueError(msg)
            VJP_RULES[t] = rule
        return fn

    return register


def elementwise_rule(*op_types: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Register dy/dx of a unary op; the rule multiplies it by gy. Extra inputs get None."""

    def register(fn: Callable[..., str]) -> Callable[..., str]:
        def rule(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
            d = fn(op, node, node.input[0], node.output[0])
            return first_only(node, op.Mul(gy, d))

        vjp_rule(*op_types)(rule)
        return fn

    return register


def scalar_like(op: Emitter, value: float, like: str) -> str:
    return op.const(value, like=like)


# --------------------------------------------------------------------------- rule helpers
# The patterns several rules share, named as JAX and autograd name them.


def first_only(node: onnx.NodeProto, gx: str | None) -> Grads:
    """`gx` for input 0 and None for the rest: an op whose other inputs are shapes, indices,
    options or constants of the rule (a unary op, Reshape, Slice, a pool's indices)."""
    return [gx, *[None] * (len(node.input) - 1)]


def bilinear(needs: Needs, ga: Callable[[], str | None],
             gb: Callable[[], str | None]) -> list[str | None]:
    """[ga(), gb()] of an op linear in each of its first two operands (a b, MatMul, Gemm's
    product; JAX's `defbilinear`): `ga` contracts gy with b, `gb` with a, and each is built
    only where its operand needs a gradient, a's first."""
    return [ga() if needs[0] else None, gb() if needs[1] else None]


def ties(op: Emitter, pairs: Iterable[tuple[str, str]],
         count: Sequence[int] | Callable[[list[str]], str | None]) -> tuple[list[str], str | None]:
    """The hits [x_i == y_i] (0/1 of x_i's type) of a max / min and how many there are where
    each is: `count(hits)`, or for `count` a list of axes the one hit's ReduceSum over them
    (keepdims). None: a single operand, which cannot tie. `pairs` is read lazily, one hit at
    a time (a y_i may be emitted after the previous hit)."""
    hits = [op.mask_of(op.Equal(x, y), x) for x, y in pairs]
    if callable(count):
        return hits, count(hits)
    return hits, op.ReduceSum(hits[0], op.ints(count), keepdims=1)


def balanced_eq(op: Emitter, gy: str, pairs: Iterable[tuple[str, str]],
                count: Sequence[int] | Callable[[list[str]], str | None]) -> tuple[str, list[str]]:
    """The tie split of a max / min: gy [x_i == y_i] / #ties (torch.maximum and torch.amax,
    JAX's `_balanced_eq`, autograd's `balanced_eq`). Returns the share gy / #ties and the hits
    (see `ties`); operand i's gradient is share * hit_i brought to its shape by the caller."""
    hits, n = ties(op, pairs, count)
    return (gy if n is None else op.Div(gy, n)), hits




# Rules for node groups the driver merges for the reverse pass (reverse.fuse_for_backward).
# They are not ONNX ops, so they live apart from VJP_RULES.
FUSED_RULES: dict[str, VjpRule] = {}


def rule_for(node: onnx.NodeProto) -> VjpRule | None:
    """The rule of `node` (domain-aware, see `rule_key`), or None."""
    return VJP_RULES.get(rule_key(node))


def supported_ops() -> list[str]:
    """Every op type with a rule or a zero gradient, sorted."""
    return sorted(set(VJP_RULES) | ZERO_GRAD_OPS)


def describe() -> dict[str, Any]:
    return {"rules": sorted(VJP_RULES), "zero_gradient": sorted(ZERO_GRAD_OPS),
            "nondifferentiable_operands": {k: sorted(v) for k, v in NONDIFF_OPERANDS.items()}}


op_key = rule_key
"""The same key under the name the ONNX-ML code uses."""
