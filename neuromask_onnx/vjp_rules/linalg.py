"""VJP rules of MatMul, Gemm, Conv, ConvTranspose, Einsum and Det.

Det's gradient is its cofactor matrix, d det(A) / d A_ij = (-1)^(i+j) det(minor_ij), which is
det(A) A^-T where A is invertible and stays exact where it is not; ONNX has no inverse, and
the minors are Det's own input: one Gather builds all n^2 of them, one Det takes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from ..graph import Emitter, Shape, attrs_of
from .registry import Grads, Needs, bilinear, scalar_like, vjp_rule

# --------------------------------------------------------------------------- linear algebra


def _swap_last(op: Emitter, x: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return op.Transpose(x, perm=perm)


@vjp_rule("MatMul")
def _vjp_matmul(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """d(a @ b) = (gy @ b^T, a^T @ gy), summed over broadcast batch axes."""
    a, b = node.input
    sa, sb = op.g.shape(a), op.g.shape(b)
    # Promote rank-1 operands to matrices, as numpy's matmul does, and restore at the end.
    a2, sa2 = (op.reshape(a, (1, sa[0])), (1, sa[0])) if len(sa) == 1 else (a, sa)
    b2, sb2 = (op.reshape(b, (sb[0], 1)), (sb[0], 1)) if len(sb) == 1 else (b, sb)
    batch = np.broadcast_shapes(sa2[:-2], sb2[:-2])
    gshape = (*batch, sa2[-2], sb2[-1])
    g2 = op.reshape(gy, gshape) if gshape != op.g.shape(node.output[0]) else gy

    def ga() -> str:  # gy @ b^T
        full = op.sum_to(op.MatMul(g2, _swap_last(op, b2, len(sb2))),
                         (*batch, sa2[-2], sa2[-1]), sa2)
        return op.reshape(full, sa) if sa2 != sa else full

    def gb() -> str:  # a^T @ gy
        full = op.sum_to(op.MatMul(_swap_last(op, a2, len(sa2)), g2),
                         (*batch, sb2[-2], sb2[-1]), sb2)
        return op.reshape(full, sb) if sb2 != sb else full

    return bilinear(needs, ga, gb)


@vjp_rule("Gemm")
def _vjp_gemm(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """Y = alpha A'B' + beta C: gA' = alpha gy B'^T, gB' = alpha A'^T gy, gC = beta gy."""
    at = attrs_of(node)
    alpha, beta = at.get("alpha", 1.0), at.get("beta", 1.0)
    ta, tb = int(bool(at.get("transA", 0))), int(bool(at.get("transB", 0)))  # nonzero = on
    a, b = node.input[:2]
    c = node.input[2] if len(node.input) > 2 and node.input[2] else None
    ga, gb = bilinear(needs,
                      lambda: (op.Gemm(gy, b, alpha=alpha, transB=1 - tb) if not ta
                               else op.Gemm(b, gy, alpha=alpha, transA=tb, transB=1)),
                      lambda: (op.Gemm(a, gy, alpha=alpha, transA=1 - ta) if not tb
                               else op.Gemm(gy, a, alpha=alpha, transA=1, transB=ta)))
    gc = None
    if c is not None and c in needs:
        gcb = op.Mul(gy, scalar_like(op, beta, gy)) if beta != 1.0 else gy
        gc = op.sum_to(gcb, op.g.shape(node.output[0]), op.g.shape(c))
    return [ga, gb, gc] if len(node.input) > 2 else [ga, gb]


def conv_pads(op: Emitter, node: onnx.NodeProto, in_spatial: Shape, kernel: Sequence[int],
              strides: Sequence[int], dilations: Sequence[int],
              out_spatial: Shape) -> list[int]:
    """Explicit [begin..., end...] pads, resolving auto_pad from the static shapes."""
    at = attrs_of(node)
    n = len(in_spatial)
    auto = at.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        return list(at.get("pads", [0] * (2 * n)))
    if auto == "VALID":
        return [0] * (2 * n)
    begin, end = [], []
    for i in range(n):
        span = (kernel[i] - 1) * dilations[i] + 1
        total = max((out_spatial[i] - 1) * strides[i] + span - in_spatial[i], 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def transpose_fit(in_spatial: Shape, out_spatial: Shape, pads: Sequence[int],
                  kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> tuple[list[int], list[int]]:
    """Pads and output_padding that make a ConvTranspose over `out` land exactly on `in`.

    The windows span (out-1) s + (k-1) d + 1 positions from -pad_begin; the input positions
    past the last window get no gradient, which output_padding adds as zeros. Never use
    ConvTranspose's output_shape: it re-splits the padding and breaks asymmetric pads.
    """
    n = len(in_spatial)
    new_pads, out_pad = list(pads[:n]) + [0] * n, [0] * n
    for i in range(n):
        span = (out_spatial[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
        end = span - pads[i] - in_spatial[i]
        if end >= 0:
            new_pads[n + i] = end
        else:
            out_pad[i] = -end
    return new_pads, out_pad


def _conv_geometry(op: Emitter, node: onnx.NodeProto, needs: Needs) -> tuple[
        str, Shape, Shape, dict[str, Any], list[int], list[int], list[int]]:
    """Weight name, input and output shapes, attributes, kernel, strides, dilations."""
    x, w = node.input[:2]
    sx, sw, sy = op.g.shape(x), op.g.shape(w), op.g.shape(node.output[0])
    if w in needs:
        msg = f"{node.op_type} {node.name!r}: gradients through weights that depend on the input"
        raise NotImplementedError(msg)
    at = attrs_of(node)
    n = len(sx) - 2
    return (w, sx, sy, at, list(at.get("kernel_shape", sw[2:])),
            list(at.get("strides", [1] * n)), list(at.get("dilations", [1] * n)))


def _bias_grad(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> list[str | None]:
    """gb = gy summed over batch and space; [] when the node has no bias input."""
    if len(node.input) < 3:
        return []
    b = node.input[2]
    rank = len(op.g.shape(node.output[0]))
    return [op.ReduceSum(gy, op.ints([0, *range(2, rank)]), keepdims=0)
            if b and b in needs else None]


@vjp_rule("Conv")
def _vjp_conv(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = ConvTranspose(gy, W) with the conv's explicit pads; gb = sum of gy."""
    w, sx, sy, at, kernel, strides, dil = _conv_geometry(op, node, needs)
    pads = conv_pads(op, node, sx[2:], kernel, strides, dil, sy[2:])
    group = at.get("group", 1)
    gx = _conv_grad_as_conv(op, gy, w, sx, sy, kernel, strides, dil, pads, group)
    if gx is None:
        gx = _strided_depthwise_grad(op, gy, w, sx, sy, kernel, strides, dil, pads, group)
    if gx is None:
        tpads, out_pad = transpose_fit(sx[2:], sy[2:], pads, kernel, strides, dil)
        gx = op.ConvTranspose(gy, w, strides=strides, dilations=dil, group=group,
                              pads=tpads, output_padding=out_pad, kernel_shape=kernel)
    return [gx, None, *_bias_grad(op, node, gy, needs)]


def _conv_grad_as_conv(op: Emitter, gy: str, w: str, sx: Shape, sy: Shape,
                       kernel: Sequence[int], strides: Sequence[int], dil: Sequence[int],
                       pads: Sequence[int], group: int) -> str | None:
    """gx of a stride-1 conv as a forward Conv of gy with the flipped, channel-swapped kernel.

    gx[i] = sum_j gy[i - pb' + j d] Wflip[j] with pads pb' = (k-1) d - pb, pe' = (k-1) d - pe.
    onnxruntime's CPU ConvTranspose has no depthwise or NCHWc kernel; its Conv has both, so
    this form is ~3x faster on depthwise layers and keeps the gradient chain in the blocked
    layout. Strided convs stay ConvTranspose: it skips the zeros a stride-1 Conv would read
    (measured: depthwise 3x3 stride 2, 144 channels at 112 px: ConvTranspose 11-13 ms, zero
    insertion + Conv 15-31 ms). None when the conv is strided, the kernel is not a constant
    or a pad exceeds the kernel's reach.
    """
    wv = op.g.const(w)
    if wv is None or any(s != 1 for s in strides):
        return None
    n = len(kernel)
    begin = [(kernel[i] - 1) * dil[i] - pads[i] for i in range(n)]
    end = [sx[2 + i] - sy[2 + i] - begin[i] + (kernel[i] - 1) * dil[i] for i in range(n)]
    if any(p < 0 for p in begin + end):
        return None
    # [C_out, C_in/g, k...] -> [C_in, C_out/g, k...], spatially flipped.
    c_in, c_out = sx[1], sy[1]
    per_out, per_in = c_out // group, c_in // group
    wt = wv.reshape(group, per_out, per_in, *wv.shape[2:]).swapaxes(1, 2)
    wt = wt.reshape(c_in, per_out, *wv.shape[2:])[(slice(None), slice(None),
                                                    *[slice(None, None, -1)] * n)]
    return op.Conv(gy, op.const(np.ascontiguousarray(wt), like=w), dilations=list(dil),
                   group=group, pads=begin + end, kernel_shape=list(kernel))


def _strided_depthwise_grad(op: Emitter, gy: str, w: str, sx: Shape, sy: Shape,
                            kernel: Sequence[int], strides: Sequence[int], dil: Sequence[int],
                            pads: Sequence[int], group: int) -> str | None:
    """gx of a strided depthwise conv: spread gy onto the stride grid, then a stride-1 Conv.

    z[s o] = gy[o] (zeros between) is a depthwise 1x1 ConvTranspose with stride s; the input
    gradient is then exactly that of a stride-1 conv whose output is z. onnxruntime's CPU
    ConvTranspose has no depthwise kernel, its Conv has a blocked one: 1.2x to 1.9x faster
    than one strided ConvTranspose on EfficientNet's and MobileNet's layers (3x3 and 5x5,
    7 to 56 px, 96 to 672 channels). Dense convs keep ConvTranspose, which skips the zeros
    that a stride-1 Conv would multiply. None unless the weight is constant, one input
    channel per group, and the conv strided.
    """
    wv = op.g.const(w)
    if wv is None or wv.shape[1] != 1 or all(s == 1 for s in strides):
        return None
    n = len(kernel)
    ones = op.const(np.ones((sy[1], 1, *[1] * n)), like=gy)
    z = op.ConvTranspose(gy, ones, strides=list(strides), group=sy[1], kernel_shape=[1] * n)
    sz = (*sy[:2], *[(sy[2 + i] - 1) * strides[i] + 1 for i in range(n)])
    op.g.shapes[z] = sz
    return _conv_grad_as_conv(op, z, w, sx, sz, kernel, [1] * n, dil, pads, group)


@vjp_rule("ConvTranspose")
def _vjp_conv_transpose(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gx = Conv(gy, W) with the same strides, dilations, pads and groups."""
    w, sx, sy, at, kernel, strides, dil = _conv_geometry(op, node, needs)
    n = len(kernel)
    auto = at.get("auto_pad", b"NOTSET")
    if "output_shape" in at or (auto not in (b"NOTSET", "NOTSET", b"", "")):
        # Recover the pads the forward op used from the static shapes; whatever split the
        # runtime chose, the begin pads are what the output cropped at the start.
        pads = []
        totals = [strides[i] * (sx[2 + i] - 1) + at.get("output_padding", [0] * n)[i]
                  + (kernel[i] - 1) * dil[i] + 1 - sy[2 + i] for i in range(n)]
        upper = auto in (b"SAME_UPPER", "SAME_UPPER")
        begins = [t - t // 2 if not upper else t // 2 for t in totals]
        pads = begins + [t - b for t, b in zip(totals, begins, strict=True)]
    else:
        pads = list(at.get("pads", [0] * (2 * n)))
    gy_full = gy  # the bias reaches every output position, the cropped ones too
    if min(pads) < 0:
        # An output_shape beyond the windows' span: negative pads, output positions that no
        # input reaches. Their gradient goes nowhere, so crop them off gy.
        starts = [max(-p, 0) for p in pads[:n]]
        ends = [sy[2 + i] - max(-pads[n + i], 0) for i in range(n)]
        gy = op.Slice(gy, op.ints(starts), op.ints(ends), op.ints(range(2, 2 + n)))
        pads = [max(p, 0) for p in pads]
    gx = op.Conv(gy, w, strides=strides, dilations=dil, group=at.get("group", 1), pads=pads,
                 kernel_shape=kernel)
    return [gx, None, *_bias_grad(op, node, gy_full, needs)]


def _parse_einsum(eq: str, shapes: Sequence[Shape]) -> tuple[list[str], str]:
    """Split an equation and spell out '...' with fresh letters (right-aligned)."""
    eq = eq.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    used = set(eq)
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c not in used]
    ell_rank = max((len(s) - (len(t) - 3) for t, s in zip(terms, shapes, strict=True)
                    if "..." in t), default=0)
    ell = "".join(spare[:ell_rank])
    out_terms = []
    for t, s in zip(terms, shapes, strict=True):
        if "..." in t:
            k = len(s) - (len(t) - 3)
            t = t.replace("...", ell[ell_rank - k:])
        out_terms.append(t)
    if "->" not in eq:
        counts = {c: sum(t.count(c) for t in out_terms) for c in set("".join(out_terms))}
        rhs = ell + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in ell))
    else:
        rhs = rhs.replace("...", ell)
    return out_terms, rhs


def _expand_full(op: Emitter, x: str, term: str, shape: Shape, sizes: dict[str, int]) -> str:
    full = [sizes[c] for c in term]
    return x if list(shape) == full else op.Expand(x, op.ints(full))


def _on_diagonal(op: Emitter, g: str, tu: str, t: str, sizes: dict[str, int], eq: str,
                 like: str) -> str:
    """g (letters `tu`) placed on the diagonals of term `t` (its letters repeated), zero off
    them: each later occurrence of a letter gets a fresh one, tied to the first by an identity
    matrix in one Einsum."""
    spare = iter(c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                 if c not in eq and c not in t)
    seen: set[str] = set()
    renamed, ties = "", []
    for c in t:
        if c in seen:
            fresh = next(spare)
            ties.append(c + fresh)
            renamed += fresh
        else:
            seen.add(c)
            renamed += c
    eyes = [op.const(np.eye(sizes[tie[0]]), like=like) for tie in ties]
    return op.Einsum(g, *eyes, equation=",".join([tu, *ties]) + "->" + renamed)


@vjp_rule("Einsum")
def _vjp_einsum(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """g_i = einsum(other operands, gy -> letters of operand i), broadcast back where needed."""
    eq = attrs_of(node)["equation"]
    eq = eq.decode() if isinstance(eq, bytes) else eq
    shapes = [op.g.shape(i) for i in node.input]
    terms, out = _parse_einsum(eq, shapes)
    sizes: dict[str, int] = {}
    for t, s in zip(terms, shapes, strict=True):
        for c, d in zip(t, s, strict=True):
            sizes[c] = max(sizes.get(c, 1), d)
    grads: list[str | None] = []
    for i, (t, s) in enumerate(zip(terms, shapes, strict=True)):
        if node.input[i] not in needs:
            grads.append(None)
            continue
        # A repeated letter reads a diagonal: differentiate the diagonal (t's distinct
        # letters), then put the gradient back on it (_on_diagonal).
        tu = "".join(dict.fromkeys(t))
        # Einsum broadcasts only through '...': spell size-1 axes out to their full size.
        others = [(terms[j], _expand_full(op, node.input[j], terms[j], shapes[j], sizes))
                  for j in range(len(terms)) if j != i]
        avail = set(out) | {c for tt, _ in others for c in tt}
        reduced = "".join(c for c in tu if c in avail)
        eq_i = ",".join([*(tt for tt, _ in others), out]) + "->" + reduced
        g = op.Einsum(*(n for _, n in others), gy, equation=eq_i)
        if reduced != tu:  # letters only this operand had: their gradient is constant along them
            shape_r = [sizes[c] if c in reduced else 1 for c in tu]
            g = op.Expand(op.reshape(g, shape_r), op.ints([sizes[c] for c in tu]))
        if tu != t:
            g = _on_diagonal(op, g, tu, t, sizes, eq, node.input[i])
        full = tuple(sizes[c] for c in t)
        grads.append(op.sum_to(g, full, s))
    return grads


DET_MAX_N = 32  # n^2 minors of (n - 1)^2 entries each: 0.9 M entries per matrix at 32


def det_minor_index(n: int) -> np.ndarray:
    """[n, n, n - 1, n - 1] flat indices into an n x n matrix: entry (r, c) of minor (i, j)."""
    i, j, r, c = np.ix_(*(np.arange(k) for k in (n, n, n - 1, n - 1)))
    return ((r + (r >= i)) * n + c + (c >= j)).astype(np.int64)


@vjp_rule("Det")
def _vjp_det(op: Emitter, node: onnx.NodeProto, gy: str, needs: Needs) -> Grads:
    """gA = gy * cofactor(A), the minors' determinants by Det itself (module docstring)."""
    a = node.input[0]
    sa = op.g.shape(a)
    n, lead = sa[-1], list(sa[:-2])
    if n > DET_MAX_N:
        msg = (f"Det {node.name!r}: the cofactor gradient of a {n} x {n} matrix needs {n * n} "
               f"minors (only n <= {DET_MAX_N})")
        raise NotImplementedError(msg)
    g = op.Unsqueeze(gy, op.ints([-2, -1]))  # [*lead, 1, 1]
    if n == 1:
        return [op.Mul(g, op.const(np.ones((1, 1)), like=a))]
    flat = op.reshape(a, [*lead, n * n])
    minors = op.Gather(flat, op.const(det_minor_index(n)), axis=len(lead))
    sign = np.where(np.add.outer(np.arange(n), np.arange(n)) % 2 == 0, 1.0, -1.0)
    cof = op.Mul(op.Det(minors), op.const(sign, like=a))
    return [op.Mul(g, cof)]
