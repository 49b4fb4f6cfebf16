"""The loss heads `instrument` puts on a classifier's scores, and how it finds the logits.

`find_logits` walks back from the chosen output through reshapes to a final Softmax,
LogSoftmax or Sigmoid, so the loss is computed from the logits before it. `loss_head` then
emits, for the output kind and the objective, the per-sample loss [N], the probabilities
[N, K'] and the seed d loss / d logits that the reverse pass (`reverse.differentiate`) starts
from; the class of each sample is read from `nm_target`. One score (K = 1) is a binary
classifier: logits become a two-class softmax over [0, z], a probability p the pair [1 - p, p].
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .errors import ModelContractError
from .graph import Emitter, Graph, Shape
from .io_names import TARGET

OutputKind = Literal["auto", "logits", "softmax", "log_softmax", "sigmoid", "probabilities"]
Objective = Literal["cross_entropy", "logit", "probability"]
_PASSTHROUGH = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"})


def find_logits(g: Graph, output: str, kind: OutputKind) -> tuple[str, str]:
    """Walk back from the output through reshapes to a final Softmax/LogSoftmax/Sigmoid."""
    producer = {o: n for n in g.nodes for o in n.output}
    name = output
    while True:
        node = producer.get(name)
        if node is None or node.op_type not in _PASSTHROUGH:
            break
        name = node.input[0]
    node = producer.get(name)
    found = {"Softmax": "softmax", "LogSoftmax": "log_softmax", "Sigmoid": "sigmoid"}.get(
        node.op_type if node is not None else "", "logits")
    if kind == "auto":
        kind = found  # type: ignore[assignment]
    if kind in ("softmax", "log_softmax", "sigmoid"):
        if found != kind:
            msg = (f"--output-kind {kind} but output {output!r} is not produced by a "
                   f"{kind} node (found {node.op_type if node else 'a graph input'}); "
                   "use --output-kind logits or probabilities")
            raise ModelContractError(msg)
        assert node is not None
        return node.input[0], kind
    return output, kind



def loss_head(op: Emitter, logits: str, kind: str, objective: str, n: int,
          k: int) -> tuple[str, str, str]:
    """Loss [N], probabilities [N, K'] and the seed gradient d loss / d logits."""
    zshape = op.g.shape(logits)
    z = op.reshape(logits, (n, k)) if zshape != (n, k) else logits
    if kind == "sigmoid" and k > 1:
        # Independent labels: loss = -log sigmoid(z_t) = softplus(-z_t).
        onehot = _onehot(op, k, z)
        probs = op.Sigmoid(z)
        if objective == "cross_entropy":
            loss = op.ReduceSum(op.Mul(onehot, op.Softplus(op.Neg(z))), op.ints([1]), keepdims=0)
            seed = op.Mul(onehot, op.Sub(probs, op.const(1.0, like=z)))
        elif objective == "logit":
            loss = op.ReduceSum(op.Mul(onehot, z), op.ints([1]), keepdims=0)
            seed = onehot
        else:
            loss = op.ReduceSum(op.Mul(onehot, probs), op.ints([1]), keepdims=0)
            seed = op.Mul(onehot, op.Mul(probs, op.Sub(op.const(1.0, like=z), probs)))
        return loss, probs, _back(op, seed, zshape, (n, k))
    if kind == "probabilities":
        return _prob_head(op, z, objective, n, k, zshape)
    binary = k == 1
    if binary:
        # One score: a two-class softmax over [0, z] is exactly the logistic model.
        z = op.Concat(op.zeros((n, 1), z), z, axis=1)
        k = 2
    onehot = _onehot(op, k, z)
    probs = op.Softmax(z, axis=1)
    if objective == "cross_entropy":
        logp = op.LogSoftmax(z, axis=1)
        loss = op.Neg(op.ReduceSum(op.Mul(logp, onehot), op.ints([1]), keepdims=0))
        seed = op.Sub(probs, onehot)
    elif objective == "logit":
        loss = op.ReduceSum(op.Mul(z, onehot), op.ints([1]), keepdims=0)
        seed = onehot
    else:
        pt = op.ReduceSum(op.Mul(probs, onehot), op.ints([1]), keepdims=1)
        loss = op.reshape(pt, (n,))
        seed = op.Mul(pt, op.Sub(onehot, probs))
    if binary:
        seed = op.Slice(seed, op.ints([1]), op.ints([2]), op.ints([1]))
        return loss, probs, _back(op, seed, zshape, (n, 1))
    return loss, probs, _back(op, seed, zshape, (n, k))


def _prob_head(op: Emitter, p: str, objective: str, n: int, k: int,
               zshape: Shape) -> tuple[str, str, str]:
    """The output already holds probabilities from an op we cannot see through."""
    single = k == 1
    if single:  # one probability p of the positive class: the pair is [1 - p, p]
        p = op.Concat(op.Sub(op.const(1.0, like=p), p), p, axis=1)
        k = 2
    onehot = _onehot(op, k, p)
    pt = op.ReduceSum(op.Mul(p, onehot), op.ints([1]), keepdims=1)
    if objective == "cross_entropy":
        # -log(max(p_t, eps)): clipped, so an underflowed probability gives a finite loss.
        eps = op.const(1e-12, like=p)
        safe = op.Max(pt, eps)
        loss = op.reshape(op.Neg(op.Log(safe)), (n,))
        live = op.mask_of(op.Greater(pt, eps), p)
        seed = op.Neg(op.Mul(onehot, op.Div(live, safe)))
    else:
        loss = op.reshape(pt, (n,))
        seed = onehot
    if single:  # d/dp of a function of [1 - p, p]
        pair = op.emit("Split", [seed, op.ints([1, 1])], outputs=2, axis=1)
        return loss, p, _back(op, op.Sub(pair[1], pair[0]), zshape, (n, 1))
    return loss, p, _back(op, seed, zshape, (n, k))


def _onehot(op: Emitter, k: int, like: str) -> str:
    t = op.reshape(TARGET, (-1, 1))
    hit = op.Equal(t, op.const(np.arange(k, dtype=np.int64).reshape(1, k)))
    return op.mask_of(hit, like)


def _back(op: Emitter, seed: str, zshape: Shape, shape: Shape) -> str:
    return op.reshape(seed, zshape) if tuple(zshape) != tuple(shape) else seed
