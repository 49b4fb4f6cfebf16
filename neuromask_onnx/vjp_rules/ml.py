"""Rules for the differentiable ONNX-ML (`ai.onnx.ml`) ops that skl2onnx and onnxmltools emit.

Keys are "ai.onnx.ml::OpType" (`registry.op_key`), so a custom op of the same name in another
domain never picks them up. The semantics followed are onnxruntime's where it and onnx's
reference evaluator disagree (the model a user deploys runs on onnxruntime):

- LinearClassifier reads its first E*F coefficients as [E, F] (E targets, F = the input's last
  dimension); one coefficient row with two class labels scores [-s, s] before the transform.
- Normalizer MAX divides by the row's signed maximum (the spec; the reference uses max |x|);
  ties at the maximum share its gradient evenly. The 1e-30 floor on the divisor is ignored.
- SVMClassifier scores are the one-vs-one decision values, [-s, s] for two classes; models
  with Platt probabilities (prob_a) couple them by an iteration and get no rule (estimated).

Every rule reads the primal scores from the graph; the SVM rules recompute the kernel matrix,
which the op hides. Gradients are computed in the input's element type.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..graph import Emitter, attrs_of
from .registry import Grads, Needs, ties, vjp_rule

ML = "ai.onnx.ml::"
_SQRT2 = 1.41421356  # onnxruntime's and the reference's constant in the probit transform
_ERFINV_A = 0.147  # Winitzki's constant in their erf^-1 approximation


def _text(v: Any, default: str) -> str:
    if v is None:
        return default
    return v.decode() if isinstance(v, bytes) else str(v)


def _as_x(op: Emitter, g: str, x: str) -> str:
    """`g` in x's element type (ONNX-ML ops output float32 whatever their input type)."""
    if op.g.dtypes.get(g) != op.g.dtypes.get(x):
        return op.cast_like(g, x)
    return g


def _rowsum(op: Emitter, v: str) -> str:
    return op.ReduceSum(v, op.ints([-1]), keepdims=1)


def _post_vjp(op: Emitter, kind: str, z: str, gz: str, raw: str | None, x: str) -> str:
    """Gradient w.r.t. the raw scores of z = post_transform(raw), from the primal output z;
    computed in the element type of the op's input x."""
    z, gz = _as_x(op, z, x), _as_x(op, gz, x)
    if kind == "NONE":
        return gz
    if kind == "LOGISTIC":  # z (1 - z)
        return op.Mul(gz, op.Mul(z, op.Sub(op.const(1.0, like=z), z)))
    if kind in ("SOFTMAX", "SOFTMAX_ZERO"):
        # SOFTMAX_ZERO leaves raw scores of exactly 0 at probability 0: with z = 0 there, the
        # softmax formula gives them no gradient (the convention at that jump).
        return op.Mul(z, op.Sub(gz, _rowsum(op, op.Mul(gz, z))))
    if kind == "PROBIT":
        # z = SQRT2 sgn(u) sqrt(t), u = 2 raw - 1, L = log(1 - u^2), v = 2/(pi A) + L/2,
        # t = sqrt(v^2 - L/A) - v (the runtimes' erf^-1 approximation, differentiated as is):
        # dz/draw = 2 (dz/dt)(dt/dL)(dL/du), dz/dt = SQRT2^2 sgn / (2 |z|) = SQRT2^2 / (2 z),
        # dt/dL = (v - 1/A) / (2 sqrt(v^2 - L/A)) - 1/2, dL/du = -2u / (1 - u^2).
        assert raw is not None
        one = op.const(1.0, like=raw)
        u = op.Sub(op.Mul(raw, op.const(2.0, like=raw)), one)
        w = op.Sub(one, op.Mul(u, u))
        log = op.Log(w)
        v = op.Add(op.const(2.0 / (np.pi * _ERFINV_A), like=raw),
                   op.Mul(log, op.const(0.5, like=raw)))
        root = op.Sqrt(op.Sub(op.Mul(v, v), op.Mul(log, op.const(1.0 / _ERFINV_A, like=raw))))
        dt = op.Sub(op.Div(op.Sub(v, op.const(1.0 / _ERFINV_A, like=raw)),
                           op.Mul(root, op.const(2.0, like=raw))), op.const(0.5, like=raw))
        dl = op.Div(op.Mul(u, op.const(-2.0, like=raw)), w)
        dz = op.Div(op.const(_SQRT2 * _SQRT2, like=raw), _as_x(op, z, raw))
        return op.Mul(_as_x(op, gz, raw), op.Mul(dz, op.Mul(dt, dl)))
    msg = f"post_transform {kind} has no rule"
    raise NotImplementedError(msg)


def _pair_sign(op: Emitter, g2: str) -> str:
    """Scores [-s, s] (one raw column written as two): d/ds = g[:, 1] - g[:, 0]."""
    first = op.Slice(g2, op.ints([0]), op.ints([1]), op.ints([-1]))
    second = op.Slice(g2, op.ints([1]), op.ints([2]), op.ints([-1]))
    return op.Sub(second, first)


# --------------------------------------------------------------------------- linear models


def _linear_weights(node: onnx.NodeProto, f: int, intercepts_key: str) -> np.ndarray:
    a = attrs_of(node)
    coef = np.asarray(a.get("coefficients", []), np.float64)
    e = len(a.get(intercepts_key) or []) or coef.size // f
    if coef.size < e * f:
        msg = f"{coef.size} coefficients for {e} targets of {f} features"
        raise NotImplementedError(msg)
    w: np.ndarray = coef[: e * f].reshape(e, f)
    return w


@vjp_rule(ML + "LinearClassifier", multi_output=True)
def linear_classifier(op: Emitter, node: onnx.NodeProto,
                      gys: list[str | None], needs: Needs) -> Grads:
    """z = post(x W^T + b); gx = post'(gz) W (every post_transform; the binary [-s, s] form)."""
    x, z, gz = node.input[0], node.output[1], gys[1]
    assert gz is not None
    a = attrs_of(node)
    shape = op.g.shape(x)
    w = _linear_weights(node, shape[-1], "intercepts")
    labels = max(len(a.get("classlabels_ints") or []), len(a.get("classlabels_strings") or []))
    kind = _text(a.get("post_transform"), "NONE")
    raw = None
    if kind == "PROBIT":
        raw = op.MatMul(x, op.const(w.T, like=x))
        if a.get("intercepts"):
            raw = op.Add(raw, op.const(np.asarray(a["intercepts"]), like=x))
        if w.shape[0] == 1 and labels == 2:
            raw = op.Concat(op.Neg(raw), raw, axis=-1)
    graw = _as_x(op, _post_vjp(op, kind, z, gz, raw, x), x)
    if w.shape[0] == 1 and labels == 2:
        graw = _pair_sign(op, graw)
    gx = op.MatMul(graw, op.const(w, like=x))
    return [op.reshape(gx, shape) if len(shape) == 1 else gx]


@vjp_rule(ML + "LinearRegressor")
def linear_regressor(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = x W^T + b (W [targets, F]); gx = gy W."""
    x = node.input[0]
    a = attrs_of(node)
    kind = _text(a.get("post_transform"), "NONE")
    if kind != "NONE":
        msg = f"post_transform {kind} (onnxruntime implements NONE only)"
        raise NotImplementedError(msg)
    shape = op.g.shape(x)
    coef = np.asarray(a.get("coefficients", []), np.float64)
    w = coef.reshape(int(a.get("targets", 1)), -1)
    gx = op.MatMul(_as_x(op, gy, x), op.const(w, like=x))
    return [op.reshape(gx, shape) if len(shape) == 1 else gx]


# --------------------------------------------------------------------------- preprocessing


@vjp_rule(ML + "Normalizer")
def normalizer(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = x / s(x) per row: gx = (gy - ds/dx sum(gy y)) / s, ds/dx = sign(x) (L1),
    y (L2), the argmax indicator (MAX, ties split evenly)."""
    x, y = node.input[0], node.output[0]
    norm = _text(attrs_of(node).get("norm"), "MAX")
    g = _as_x(op, gy, x)
    yx = _as_x(op, y, x)
    if norm == "L1":
        s = op.ReduceL1(x, op.ints([-1]), keepdims=1)
        ds = op.Sign(x)
    elif norm == "L2":
        s = op.ReduceL2(x, op.ints([-1]), keepdims=1)
        ds = yx
    elif norm == "MAX":
        s = op.ReduceMax(x, op.ints([-1]), keepdims=1)
        (hit,), ties_at = ties(op, [(x, s)], [-1])  # ties split evenly: hit / #ties
        assert ties_at is not None
        ds = op.Div(hit, ties_at)
    else:
        msg = f"norm {norm}"
        raise NotImplementedError(msg)
    return [op.Div(op.Sub(g, op.Mul(ds, _rowsum(op, op.Mul(g, yx)))), s)]


@vjp_rule(ML + "Scaler")
def scaler(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = (x - offset) scale; gx = gy scale."""
    x = node.input[0]
    scale = np.asarray(attrs_of(node).get("scale") or [1.0], np.float64)
    return [op.Mul(_as_x(op, gy, x), op.const(scale, like=x))]


@vjp_rule(ML + "ArrayFeatureExtractor")
def array_feature_extractor(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = x[..., idx]: gx = gy S with S[i, idx_i] = 1 (repeated indices add up)."""
    x, ind = node.input[0], node.input[1]
    idx = op.g.const(ind)
    if idx is None:
        msg = "its indices are computed at run time"
        raise NotImplementedError(msg)
    shape = op.g.shape(x)
    flat = np.asarray(idx, np.int64).ravel()
    sel = np.zeros((flat.size, shape[-1]))
    np.add.at(sel, (np.arange(flat.size), flat % shape[-1]), 1.0)
    g = _as_x(op, gy, x)
    if len(shape) == 1:  # the runtimes return [1, k] for a vector input
        return [op.reshape(op.MatMul(g, op.const(sel, like=x)), shape), None]
    g = op.reshape(g, (*shape[:-1], flat.size))
    return [op.MatMul(g, op.const(sel, like=x)), None]


@vjp_rule(ML + "Imputer")
def imputer(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = x except where x == replaced_value (there a constant): gx = gy [x != replaced].
    A NaN replaced_value never matches a finite x, so the gradient passes through."""
    x = node.input[0]
    a = attrs_of(node)
    replaced = float(a.get("replaced_value_float", 0.0))
    g = _as_x(op, gy, x)
    if np.isnan(replaced):
        return [op.Identity(g)]
    keep = op.mask_of(op.Not(op.Equal(x, op.const(replaced, like=x))), x)
    return [op.Mul(g, keep)]


# --------------------------------------------------------------------------- SVMs


def _kernel_vjp(op: Emitter, node: onnx.NodeProto, x: str, sv: np.ndarray, gk: str) -> str:
    """gx of K = kernel(x, sv) [N, S] for the incoming gK [N, S]."""
    a = attrs_of(node)
    kind = _text(a.get("kernel_type"), "LINEAR")
    params = list(a.get("kernel_params") or [0.0, 0.0, 0.0])
    gamma, coef0, degree = float(params[0]), float(params[1]), int(params[2])
    svc = op.const(sv, like=x)
    if kind == "LINEAR":
        return op.MatMul(gk, svc)
    dot = op.MatMul(x, op.const(sv.T, like=x))
    if kind == "RBF":
        # K = exp(-gamma |x - sv|^2): dK/dx = -2 gamma K (x - sv).
        d2 = op.Add(op.Sub(_rowsum(op, op.Mul(x, x)), op.Mul(dot, op.const(2.0, like=x))),
                    op.const((sv * sv).sum(axis=1)[None, :], like=x))
        k = op.Exp(op.Mul(d2, op.const(-gamma, like=x)))
        gkk = op.Mul(gk, k)
        inner = op.Sub(op.Mul(x, _rowsum(op, gkk)), op.MatMul(gkk, svc))
        return op.Mul(inner, op.const(-2.0 * gamma, like=x))
    t = op.Add(op.Mul(dot, op.const(gamma, like=x)), op.const(coef0, like=x))
    if kind == "POLY":  # (gamma dot + c0)^d: d gamma t^(d-1)
        if degree == 0:
            return op.Mul(op.MatMul(gk, svc), op.const(0.0, like=x))
        dk = op.Pow(t, op.const(float(degree - 1), like=x)) if degree > 1 else None
        scaled = op.Mul(gk, dk) if dk is not None else gk
        return op.Mul(op.MatMul(scaled, svc), op.const(gamma * degree, like=x))
    if kind == "SIGMOID":  # tanh(gamma dot + c0): gamma (1 - tanh^2)
        th = op.Tanh(t)
        d = op.Sub(op.const(1.0, like=x), op.Mul(th, th))
        return op.Mul(op.MatMul(op.Mul(gk, d), svc), op.const(gamma, like=x))
    msg = f"kernel_type {kind}"
    raise NotImplementedError(msg)


@vjp_rule(ML + "SVMClassifier", multi_output=True)
def svm_classifier(op: Emitter, node: onnx.NodeProto, gys: list[str | None], needs: Needs) -> Grads:
    """One-vs-one decisions D = K(x, SV) C + rho, scores = post(D) ([-s, s] for two
    classes); gx = kernel'(post'(gz) C^T). The linear form (no support vectors): D = x W^T."""
    x, z, gz = node.input[0], node.output[1], gys[1]
    assert gz is not None
    a = attrs_of(node)
    if a.get("prob_a"):
        msg = "its Platt probabilities (prob_a) are coupled by an iteration"
        raise NotImplementedError(msg)
    shape = op.g.shape(x)
    if len(shape) != 2:
        msg = f"input of rank {len(shape)}"
        raise NotImplementedError(msg)
    kind = _text(a.get("post_transform"), "NONE")
    if kind == "PROBIT":
        msg = "post_transform PROBIT"
        raise NotImplementedError(msg)
    coefs = np.asarray(a.get("coefficients", []), np.float64)
    counts = [int(v) for v in a.get("vectors_per_class") or []]
    k = max(len(a.get("classlabels_ints") or []), len(a.get("classlabels_strings") or []), 1)
    if sum(counts) == 0:  # SVM_LINEAR: one score per class
        w = coefs.reshape(k, -1)
        return [op.MatMul(_as_x(op, _post_vjp(op, kind, z, gz, None, x), x),
                          op.const(w, like=x))]
    s = sum(counts)
    sv = np.asarray(a["support_vectors"], np.float64).reshape(s, -1)
    c = coefs.reshape(-1, s)
    start = np.cumsum([0, *counts[:-1]])
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    cmat = np.zeros((s, len(pairs)))
    for p, (i, j) in enumerate(pairs):
        si, sj = slice(start[i], start[i] + counts[i]), slice(start[j], start[j] + counts[j])
        cmat[si, p] = c[j - 1, si]
        cmat[sj, p] = c[i, sj]
    graw = _as_x(op, _post_vjp(op, kind, z, gz, None, x), x)
    if len(pairs) == 1:
        graw = _pair_sign(op, graw)
    gk = op.MatMul(graw, op.const(cmat.T, like=x))
    return [_kernel_vjp(op, node, x, sv, gk)]


@vjp_rule(ML + "SVMRegressor")
def svm_regressor(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = K(x, SV) c + rho (or x w + rho without support vectors); gx = kernel'(gy c^T)."""
    x = node.input[0]
    a = attrs_of(node)
    if int(a.get("one_class", 0)):
        msg = "one_class outputs are +-1"
        raise NotImplementedError(msg)
    if _text(a.get("post_transform"), "NONE") != "NONE":
        msg = "a post_transform other than NONE"
        raise NotImplementedError(msg)
    if len(op.g.shape(x)) != 2:
        msg = f"input of rank {len(op.g.shape(x))}"
        raise NotImplementedError(msg)
    coefs = np.asarray(a.get("coefficients", []), np.float64)
    g = _as_x(op, gy, x)
    s = int(a.get("n_supports", 0))
    if s == 0:
        return [op.MatMul(g, op.const(coefs.reshape(1, -1), like=x))]
    sv = np.asarray(a["support_vectors"], np.float64).reshape(s, -1)
    gk = op.MatMul(g, op.const(coefs.reshape(1, s), like=x))
    return [_kernel_vjp(op, node, x, sv, gk)]
