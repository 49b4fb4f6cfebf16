"""VJP rules of onnxruntime's own fused ops, emitting standard ONNX ops only.

A model saved after onnxruntime's graph optimisation (`SessionOptions.optimized_model_filepath`)
or its transformer optimizer carries com.microsoft ops (FusedConv, FusedGemm, FusedMatMul,
the Gelu family, SkipLayerNormalization). Each rule unfuses its op: it differentiates the fused
activation from the op's output (the conventions of `elementwise` at kinks) and hands the rest
to the standard rule (Conv, Gemm, MatMul, LayerNormalization) on an equivalent node. Rules
for com.microsoft ops are keyed `com.microsoft::<op>` (see `registry.rule_key`): the domain
tells com.microsoft Gelu from onnx's Gelu-20.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx
from onnx import helper

from ..graph import Emitter, attrs_of
from .elementwise import d_gelu
from .nn import normalized_grad
from .registry import VJP_RULES, Grads, Needs, scalar_like, vjp_rule

MS = "com.microsoft::"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _activation_grad(op: Emitter, node: onnx.NodeProto, y: str, gy: str, act: str,
                     params: Sequence[float]) -> str:
    """gy times the fused activation's derivative, read off its output y."""
    if act in ("", "Identity"):
        return gy
    if act == "Relu":  # Relu'(0) = 0
        d = op.step(y, 0.0, above=True)
    elif act == "Tanh":
        d = op.Sub(scalar_like(op, 1.0, y), op.Mul(y, y))
    elif act == "Sigmoid":
        d = op.Mul(y, op.complement(y))
    elif act == "LeakyRelu":  # [y > 0] = [x > 0] for alpha > 0
        alpha = float(params[0]) if params else 0.01
        if alpha <= 0:
            msg = f"{node.op_type} {node.name!r}: LeakyRelu with alpha {alpha} <= 0"
            raise NotImplementedError(msg)
        pos = op.step(y, 0.0, above=True)
        d = op.Add(scalar_like(op, alpha, y), op.Mul(pos, scalar_like(op, 1.0 - alpha, y)))
    elif act == "Clip":  # no gradient at the bounds, as Clip's rule
        lo, hi = (float(params[0]), float(params[1])) if len(params) >= 2 else (-3e38, 3e38)
        d = op.Mul(op.step(y, lo, above=True), op.step(y, hi, above=False))
    elif act == "HardSigmoid":
        alpha = float(params[0]) if params else 0.2
        d = op.Mul(op.Mul(op.step(y, 0.0, above=True), op.step(y, 1.0, above=False)),
                   scalar_like(op, alpha, y))
    else:
        msg = f"{node.op_type} {node.name!r}: fused activation {act!r}"
        raise NotImplementedError(msg)
    return op.Mul(gy, d)


def _standard(op: Emitter, op_type: str, node: onnx.NodeProto, inputs: Sequence[str],
              gy: str, keep: Sequence[str], needs: Needs) -> Grads:
    """The standard rule of `op_type` on `inputs` in place of `node`'s (each needed where the
    input at its index is), keeping the attributes `keep`."""
    at = {k: v for k, v in attrs_of(node).items() if k in keep}
    equiv = helper.make_node(op_type, list(inputs), [node.output[0]], name=node.name, **at)
    return VJP_RULES[op_type](op, equiv, [gy], needs.moved_to(inputs))


_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


@vjp_rule(MS + "FusedConv")
def _vjp_fused_conv(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = act(Conv(X, W, B) + Z): g = gy act'(y); Conv's rule for X and B; gZ = g."""
    at = attrs_of(node)
    y = node.output[0]
    g = _activation_grad(op, node, y, gy, _s(at.get("activation", "")),
                         list(at.get("activation_params", [])))
    ins = list(node.input)
    conv = list(_standard(op, "Conv", node, ins[:3], g, _CONV_ATTRS, needs))
    if len(ins) > 3 and ins[3]:
        if len(conv) < 3:
            conv.append(None)
        conv.append(op.sum_to(g, op.g.shape(y), op.g.shape(ins[3])))
    return conv


@vjp_rule(MS + "FusedGemm")
def _vjp_fused_gemm(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = act(alpha A'B' + beta C): g = gy act'(y), then Gemm's rule."""
    at = attrs_of(node)
    params = [at.get("activation_alpha", 0.01 if _s(at.get("activation", "")) == "LeakyRelu"
                     else 0.2), at.get("activation_beta", 0.5)]
    g = _activation_grad(op, node, node.output[0], gy, _s(at.get("activation", "")), params)
    return _standard(op, "Gemm", node, node.input, g, ("alpha", "beta", "transA", "transB"),
                     needs)


@vjp_rule(MS + "FusedMatMul")
def _vjp_fused_matmul(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = alpha op(A) @ op(B), op = swap of the last two axes where transA / transB."""
    at = attrs_of(node)
    if at.get("transBatchA", 0) or at.get("transBatchB", 0):
        msg = f"FusedMatMul {node.name!r}: transBatchA / transBatchB"
        raise NotImplementedError(msg)
    alpha = float(at.get("alpha", 1.0))
    ins: list[tuple[str, list[int] | None]] = []
    for name, t in zip(node.input, (at.get("transA", 0), at.get("transB", 0)), strict=True):
        shape = op.g.shape(name)
        if t and len(shape) >= 2:
            perm = [*range(len(shape) - 2), len(shape) - 1, len(shape) - 2]
            name_t = op.Transpose(name, perm=perm)
            op.g.shapes[name_t] = tuple(shape[p] for p in perm)
            ins.append((name_t, perm))
        else:
            ins.append((name, None))
    g = op.Mul(gy, scalar_like(op, alpha, gy)) if alpha != 1.0 else gy
    grads = _standard(op, "MatMul", node, [n for n, _ in ins], g, (), needs)
    out: list[str | None] = []
    for (_, back), orig, gx in zip(ins, node.input, grads, strict=True):
        if gx is None or orig not in needs:
            out.append(None)
        else:
            out.append(op.Transpose(gx, perm=back) if back is not None else gx)
    return out


# --------------------------------------------------------------------------- the Gelu family


def _gelu_node(node: onnx.NodeProto, tanh: bool) -> onnx.NodeProto:
    return helper.make_node("Gelu", [node.input[0]], [node.output[0]],
                            approximate="tanh" if tanh else "none")


def _biased_gelu(op: Emitter, node: onnx.NodeProto, gy: str, tanh: bool,
                 needs: Needs) -> Grads:
    """gelu(x + b): gx = gy gelu'(x + b), gb = gx summed to b's shape."""
    x = node.input[0]
    b = node.input[1] if len(node.input) > 1 and node.input[1] else ""
    s = op.Add(x, b) if b else x
    g = op.Mul(gy, d_gelu(op, _gelu_node(node, tanh), s, node.output[0]))
    sy = op.g.shape(node.output[0])
    grads: list[str | None] = [op.sum_to(g, sy, op.g.shape(x)) if x in needs else None]
    if len(node.input) > 1:
        grads.append(op.sum_to(g, sy, op.g.shape(b)) if b and b in needs else None)
    return grads


@vjp_rule(MS + "Gelu")
def _vjp_ms_gelu(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """Exact (erf) Gelu: gx = gy (Phi(x) + x phi(x))."""
    return _biased_gelu(op, node, gy, tanh=False, needs=needs)


@vjp_rule(MS + "BiasGelu")
def _vjp_bias_gelu(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gelu(A + B), erf form."""
    return _biased_gelu(op, node, gy, tanh=False, needs=needs)


@vjp_rule(MS + "FastGelu")
def _vjp_fast_gelu(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gelu(X + bias), tanh approximation."""
    return _biased_gelu(op, node, gy, tanh=True, needs=needs)


@vjp_rule(MS + "QuickGelu")
def _vjp_quick_gelu(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """y = x sigmoid(a x): gx = gy s (1 + a x (1 - s)), s = sigmoid(a x)."""
    x = node.input[0]
    alpha = float(attrs_of(node).get("alpha", 1.702))
    ax = op.Mul(x, scalar_like(op, alpha, x))
    s = op.Sigmoid(ax)
    d = op.Mul(s, op.Add(scalar_like(op, 1.0, x), op.Mul(ax, op.complement(s))))
    return [op.Mul(gy, d)]


# --------------------------------------------------------------------------- normalisation


def _skip_sum(op: Emitter, node: onnx.NodeProto, bias_at: int) -> str:
    """input + skip (+ bias): the op's own 4th output where the graph kept it."""
    if len(node.output) > 3 and node.output[3]:
        return str(node.output[3])
    s = op.Add(node.input[0], node.input[1])
    if len(node.input) > bias_at and node.input[bias_at]:
        s = op.Add(s, node.input[bias_at])
    op.g.shapes[s] = op.g.shape(node.input[0])
    return s


def _rms_grad(op: Emitter, x: str, h: str, axes: list[int], eps: float) -> str:
    """gx of x r, r = 1 / sqrt(mean(x^2) + eps), given h = d loss / d (x r)."""
    ax = op.ints(axes)
    r = op.Reciprocal(op.Sqrt(op.Add(op.ReduceMean(op.Mul(x, x), ax, keepdims=1),
                                     scalar_like(op, eps, x))))
    mhx = op.ReduceMean(op.Mul(h, x), ax, keepdims=1)
    return op.Mul(r, op.Sub(h, op.Mul(x, op.Mul(mhx, op.Mul(r, r)))))


def _skip_norm(op: Emitter, node: onnx.NodeProto, gys: Sequence[str | None],
               simplified: bool, needs: Needs) -> Grads:
    if any(g is not None for g in gys[1:3]):
        msg = f"{node.op_type} {node.name!r}: its mean / inv_std_var outputs feed the output"
        raise NotImplementedError(msg)
    bias_at = 3 if simplified else 4
    for name in node.input[2:bias_at]:
        if name and name in needs:
            msg = f"{node.op_type} {node.name!r}: gamma, beta or bias that depend on the input"
            raise NotImplementedError(msg)
    s = _skip_sum(op, node, bias_at)
    ss = op.g.shape(s)
    eps = float(attrs_of(node).get("epsilon", 1e-12))
    parts = []
    if gys[0] is not None:
        h = op.Mul(gys[0], node.input[2])
        parts.append(_rms_grad(op, s, h, [len(ss) - 1], eps) if simplified
                     else normalized_grad(op, s, h, [len(ss) - 1], eps))
    if len(gys) > 3 and gys[3] is not None:
        parts.append(gys[3])
    gs = parts[0] if len(parts) == 1 else op.Add(*parts)
    grads: list[str | None] = []
    for i, name in enumerate(node.input):
        grads.append(op.sum_to(gs, ss, op.g.shape(name))
                     if name and name in needs and (i < 2 or i == bias_at) else None)
    return grads


@vjp_rule(MS + "SkipLayerNormalization", multi_output=True)
def _vjp_skip_layer_norm(op: Emitter, node: onnx.NodeProto,
                         gys: Sequence[str | None], needs: Needs) -> Grads:
    """y = LN(input + skip + bias) gamma + beta over the last axis; the sum output adds in."""
    return _skip_norm(op, node, gys, simplified=False, needs=needs)


@vjp_rule(MS + "SkipSimplifiedLayerNormalization", multi_output=True)
def _vjp_skip_rms_norm(op: Emitter, node: onnx.NodeProto,
                       gys: Sequence[str | None], needs: Needs) -> Grads:
    """y = RMSNorm(input + skip + bias) gamma over the last axis."""
    return _skip_norm(op, node, gys, simplified=True, needs=needs)
