"""VJP rules of the recurrent ops LSTM, GRU and RNN: unroll, then differentiate the unrolled form.

The sequence length is static after `graph.prepare`, so a rule re-expresses the node as its
recurrence unrolled over time in standard ops (MatMul, Add, Split, the activations, Mul) and
runs the driver's own reverse pass over those nodes: every step's gradient comes from the
element rules, which are checked one by one. The unrolled forward is a recomputation inside
the backward pass (the primal node still produces the outputs the model reads); its values
are the ones the reverse pass needs, which the fused ONNX op does not expose.

Conventions, from the ONNX spec (checked against onnxruntime): gates in the order i o f c
(LSTM) and z r h (GRU); `clip` bounds each activation's input; `sequence_lens` freezes a
sample's state after its last step and zeroes its later `Y` rows (a reverse pass starts at
the sample's own last step); `layout` 1 puts the batch axis first in X, Y, the states.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx

from ..graph import Emitter, Shape, attrs_of
from .registry import Grads, Needs, vjp_rule

_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# Activation -> (how many alphas, how many betas, default alpha, default beta); onnxruntime
# takes the alphas and betas in order for the activations that use them.
_ACT_PARAMS: dict[str, tuple[int, int, float, float]] = {
    "affine": (1, 1, 1.0, 0.0), "leakyrelu": (1, 0, 0.01, 0.0),
    "thresholdedrelu": (1, 0, 1.0, 0.0), "scaledtanh": (1, 1, 1.0, 1.0),
    "hardsigmoid": (1, 1, 0.2, 0.5), "elu": (1, 0, 1.0, 0.0),
}
_PLAIN = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softsign": "Softsign",
          "softplus": "Softplus"}

Act = Callable[[str, Callable[[str], str]], str]


class _Unroller:
    """Emits the unrolled recurrence through `op`, recording every value's static shape."""

    def __init__(self, op: Emitter, node: onnx.NodeProto) -> None:
        self.op, self.node = op, node
        self.at = attrs_of(node)
        ins = list(node.input) + [""] * (8 - len(node.input))
        self.x, self.w, self.r, self.b, self.lens, self.h0 = ins[:6]
        self.c0 = ins[6] if node.op_type == "LSTM" else ""
        self.p = ins[7] if node.op_type == "LSTM" else ""
        self.layout = int(self.at.get("layout", 0))
        sx = op.g.shape(self.x)
        self.t, self.batch = (sx[1], sx[0]) if self.layout else (sx[0], sx[1])
        self.hidden = op.g.shape(self.r)[-1]
        self.dirs = op.g.shape(self.w)[0]
        self.direction = self.at.get("direction", b"forward")
        if isinstance(self.direction, bytes):
            self.direction = self.direction.decode()
        self.clip = self.at.get("clip")
        self.acts = self._activations()

    # ---- helpers
    def put(self, name: str, shape: Sequence[int]) -> str:
        self.op.g.shapes[name] = tuple(int(d) for d in shape)
        return name

    def part(self, name: str, d: int, lo: int, hi: int) -> str:
        """name[d, lo:hi] (weights, biases, peepholes) as a constant when it is one."""
        op = self.op
        arr = op.g.const(name)
        shape = op.g.shape(name)
        if arr is not None:
            return op.const(arr[d, lo:hi], like=self.x)
        rest = shape[2:]
        s = self.put(op.Slice(name, op.ints([d, lo]), op.ints([d + 1, hi]), op.ints([0, 1])),
                     (1, hi - lo, *rest))
        return self.put(op.reshape(s, (hi - lo, *rest)), (hi - lo, *rest))

    def matrix_t(self, name: str, d: int, lo: int, hi: int) -> str:
        """name[d, lo:hi]^T: a [in, out] right operand for MatMul."""
        arr = self.op.g.const(name)
        if arr is not None:
            return self.op.const(np.ascontiguousarray(arr[d, lo:hi].T), like=self.x)
        m = self.part(name, d, lo, hi)
        return self.put(self.op.Transpose(m, perm=[1, 0]), self.op.g.shape(m)[::-1])

    def state0(self, name: str, d: int) -> str:
        """The initial state of direction d as [B, H] (zeros when the input is absent)."""
        op, bh = self.op, (self.batch, self.hidden)
        if not name:
            return op.const(np.zeros(bh), like=self.x)
        axis = 1 if self.layout else 0
        starts, ends = op.ints([d]), op.ints([d + 1])
        s = self.put(op.Slice(name, starts, ends, op.ints([axis])),
                     (self.batch, 1, self.hidden) if self.layout else (1, *bh))
        return self.put(op.reshape(s, bh), bh)

    def _activations(self) -> list[Act]:
        kind = self.node.op_type
        names = [a.decode() if isinstance(a, bytes) else a
                 for a in self.at.get("activations", [])]
        per = len(_DEFAULT_ACTS[kind])
        if not names:
            names = _DEFAULT_ACTS[kind] * self.dirs
        if len(names) != per * self.dirs:
            msg = (f"{kind} {self.node.name!r}: {len(names)} activations for "
                   f"{self.dirs} direction(s) of {per}")
            raise NotImplementedError(msg)
        alphas = list(self.at.get("activation_alpha", []))
        betas = list(self.at.get("activation_beta", []))
        return [self._activation(n, alphas, betas) for n in names]

    def _activation(self, name: str, alphas: list[float], betas: list[float]) -> Act:
        """One activation as standard ops; `keep` records the shape of each value it makes."""
        op, key = self.op, name.lower()
        if key in _PLAIN:
            t = _PLAIN[key]
            return lambda v, keep: keep(getattr(op, t)(v))
        if key not in _ACT_PARAMS:
            msg = f"{self.node.op_type} {self.node.name!r}: activation {name!r} is not supported"
            raise NotImplementedError(msg)
        na, nb, da, db = _ACT_PARAMS[key]
        a = float(alphas.pop(0)) if na and alphas else da
        b = float(betas.pop(0)) if nb and betas else db
        like = self.x
        if key == "affine":
            return lambda v, keep: keep(op.Add(keep(op.Mul(v, op.const(a, like=like))),
                                               op.const(b, like=like)))
        if key == "leakyrelu":
            return lambda v, keep: keep(op.LeakyRelu(v, alpha=a))
        if key == "elu":
            return lambda v, keep: keep(op.Elu(v, alpha=a))
        if key == "hardsigmoid":
            return lambda v, keep: keep(op.HardSigmoid(v, alpha=a, beta=b))
        if key == "scaledtanh":
            return lambda v, keep: keep(op.Mul(keep(op.Tanh(keep(op.Mul(
                v, op.const(b, like=like))))), op.const(a, like=like)))
        # ThresholdedRelu: x where x > alpha, else 0 (no gradient at the threshold).
        return lambda v, keep: keep(op.Mul(v, keep(op.mask_of(
            keep(op.Greater(v, op.const(a, like=like))), v))))

    def act(self, d: int, k: int, v: str) -> str:
        """Activation k of direction d applied to v, after the cell clip."""
        shape = self.op.g.shape(v)
        if self.clip is not None:
            # Emitter.const makes [1] tensors; Clip's bounds are scalars (Reshape to []).
            c = float(self.clip)
            lo, hi = (self.put(self.op.reshape(self.op.const([b], like=v), ()), ())
                      for b in (-c, c))
            v = self.put(self.op.Clip(v, lo, hi), shape)
        per = len(_DEFAULT_ACTS[self.node.op_type])
        return self.acts[d * per + k](v, lambda name: self.put(name, shape))

    def split(self, v: str, parts: int, axis: int, shape: Shape) -> list[str]:
        if parts == 1:
            return [v]
        size = shape[axis] // parts
        outs = self.op.emit("Split", [v, self.op.ints([size] * parts)], outputs=parts, axis=axis)
        piece = tuple(size if i == axis else s for i, s in enumerate(shape))
        return [self.put(o, piece) for o in outs]

    def keep(self, t: int) -> str | None:
        """[B, 1] 0/1: which samples are still running at time step t (None: all of them)."""
        op = self.op
        if not self.lens:
            return None
        lens = op.g.const(self.lens)
        if lens is not None and bool(np.all(lens.reshape(-1) > t)):
            return None
        lens_i = self.put(op.Cast(self.lens, to=onnx.TensorProto.INT64,
                                  _dtype=onnx.TensorProto.INT64), (self.batch,))
        live = op.Less(op.const(np.array([t], dtype=np.int64)), lens_i)
        return self.put(op.reshape(op.mask_of(live, self.x), (self.batch, 1)), (self.batch, 1))

    def hold(self, keep: str | None, new: str, old: str) -> str:
        """new where the sample is running, else old: old + keep (new - old)."""
        if keep is None:
            return new
        op, shape = self.op, self.op.g.shape(new)
        return self.put(op.Add(old, self.put(op.Mul(keep, self.put(op.Sub(new, old), shape)),
                                             shape)), shape)

    # ---- the unrolled node
    def run(self) -> list[str]:
        """The names computing the node's outputs (Y, Y_h[, Y_c]) from the same inputs."""
        op, kind, hsz = self.op, self.node.op_type, self.hidden
        gates = _GATES[kind]
        ys, hs, cs = [], [], []
        for d in range(self.dirs):
            rev = self.direction == "reverse" or (self.direction == "bidirectional" and d == 1)
            xw = self._input_part(d, gates)
            steps = self.split(xw, self.t, 1 if self.layout else 0, op.g.shape(xw))
            h, c = self.state0(self.h0, d), self.state0(self.c0, d) if kind == "LSTM" else ""
            out: dict[int, str] = {}
            for t in (range(self.t - 1, -1, -1) if rev else range(self.t)):
                xt = self.put(op.reshape(steps[t], (self.batch, gates * hsz)),
                              (self.batch, gates * hsz))
                keep = self.keep(t)
                if kind == "LSTM":
                    h_new, c_new = self._lstm_step(d, xt, h, c)
                    c = self.hold(keep, c_new, c)
                elif kind == "GRU":
                    h_new = self._gru_step(d, xt, h)
                else:
                    h_new = self._rnn_step(d, xt, h)
                out[t] = h_new if keep is None else self.put(op.Mul(keep, h_new),
                                                              op.g.shape(h_new))
                h = self.hold(keep, h_new, h)
            ys.append(self._stack([out[t] for t in range(self.t)]))
            hs.append(h)
            cs.append(c)
        y = ys[0] if self.dirs == 1 else self._cat(ys, 2 if self.layout else 1)
        results = [y, self._states(hs), self._states(cs) if kind == "LSTM" else ""]
        return results[: len(self.node.output)]

    def _input_part(self, d: int, gates: int) -> str:
        """X W^T + the biases that do not meet the state: [T, B, G H] (layout 1: [B, T, G H])."""
        op, kind, hsz = self.op, self.node.op_type, self.hidden
        sx = op.g.shape(self.x)
        oshape = (*sx[:2], gates * hsz)
        xw = self.put(op.MatMul(self.x, self.matrix_t(self.w, d, 0, gates * hsz)), oshape)
        if not self.b:
            return xw
        bias = self.part(self.b, d, 0, gates * hsz)
        if kind == "GRU" and self.at.get("linear_before_reset", 0):
            # Rb_h sits inside r * (H R_h^T + Rb_h): only Rb_z, Rb_r join here.
            rb = self.part(self.b, d, gates * hsz, (2 * gates - 1) * hsz)
            zero = op.const(np.zeros(hsz), like=self.x)
            rb = self.put(op.Concat(rb, zero, axis=0), ((gates * hsz),))
        else:
            rb = self.part(self.b, d, gates * hsz, 2 * gates * hsz)
        both = self.put(op.Add(bias, rb), (gates * hsz,))
        return self.put(op.Add(xw, both), oshape)

    def _lstm_step(self, d: int, xt: str, h: str, c: str) -> tuple[str, str]:
        op, bh, hsz = self.op, (self.batch, self.hidden), self.hidden
        g4 = (self.batch, 4 * hsz)
        pre = self.put(op.Add(xt, self.put(op.MatMul(h, self.matrix_t(self.r, d, 0, 4 * hsz)),
                                           g4)), g4)
        i, o, f, cc = self.split(pre, 4, 1, g4)
        if self.p:
            i = self.put(op.Add(i, self.put(op.Mul(c, self.part(self.p, d, 0, hsz)), bh)), bh)
        ig = self.act(d, 0, i)
        if self.at.get("input_forget", 0):
            fg = self.put(op.Sub(op.const(np.ones(1), like=self.x), ig), bh)
        else:
            if self.p:
                f = self.put(op.Add(f, self.put(op.Mul(c, self.part(self.p, d, 2 * hsz,
                                                                      3 * hsz)), bh)), bh)
            fg = self.act(d, 0, f)
        cand = self.act(d, 1, cc)
        c_new = self.put(op.Add(self.put(op.Mul(fg, c), bh), self.put(op.Mul(ig, cand), bh)), bh)
        if self.p:
            o = self.put(op.Add(o, self.put(op.Mul(c_new, self.part(self.p, d, hsz, 2 * hsz)),
                                            bh)), bh)
        og = self.act(d, 0, o)
        h_new = self.put(op.Mul(og, self.act(d, 2, c_new)), bh)
        return h_new, c_new

    def _gru_step(self, d: int, xt: str, h: str) -> str:
        op, bh, hsz = self.op, (self.batch, self.hidden), self.hidden
        g2 = (self.batch, 2 * hsz)
        parts = self.split(xt, 3, 1, (self.batch, 3 * hsz))
        x_zr = self.put(op.Concat(parts[0], parts[1], axis=1), g2)
        x_h = parts[2]
        hz = self.put(op.MatMul(h, self.matrix_t(self.r, d, 0, 2 * hsz)), g2)
        z_pre, r_pre = self.split(self.put(op.Add(x_zr, hz), g2), 2, 1, g2)
        z, r = self.act(d, 0, z_pre), self.act(d, 0, r_pre)
        rh = self.matrix_t(self.r, d, 2 * hsz, 3 * hsz)
        if self.at.get("linear_before_reset", 0):
            hr = self.put(op.MatMul(h, rh), bh)
            if self.b:
                hr = self.put(op.Add(hr, self.part(self.b, d, 5 * hsz, 6 * hsz)), bh)
            inner = self.put(op.Mul(r, hr), bh)
        else:
            inner = self.put(op.MatMul(self.put(op.Mul(r, h), bh), rh), bh)
        cand = self.act(d, 1, self.put(op.Add(x_h, inner), bh))
        # H = (1 - z) cand + z h = cand + z (h - cand)
        return self.put(op.Add(cand, self.put(op.Mul(z, self.put(op.Sub(h, cand), bh)), bh)),
                        bh)

    def _rnn_step(self, d: int, xt: str, h: str) -> str:
        op, bh = self.op, (self.batch, self.hidden)
        hr = self.put(op.MatMul(h, self.matrix_t(self.r, d, 0, self.hidden)), bh)
        return self.act(d, 0, self.put(op.Add(xt, hr), bh))

    def _stack(self, hs: list[str]) -> str:
        """Per-step [B, H] -> Y of one direction: [T, 1, B, H] (layout 1: [B, T, 1, H])."""
        b, hsz, n = self.batch, self.hidden, len(hs)
        one = (b, 1, 1, hsz) if self.layout else (1, 1, b, hsz)
        parts = [self.put(self.op.reshape(v, one), one) for v in hs]
        return self._cat(parts, 1 if self.layout else 0) if n > 1 else parts[0]

    def _states(self, hs: list[str]) -> str:
        """Final [B, H] per direction -> [D, B, H] (layout 1: [B, D, H])."""
        b, hsz = self.batch, self.hidden
        one = (b, 1, hsz) if self.layout else (1, b, hsz)
        parts = [self.put(self.op.reshape(v, one), one) for v in hs]
        return self._cat(parts, 1 if self.layout else 0) if len(parts) > 1 else parts[0]

    def _cat(self, parts: list[str], axis: int) -> str:
        shapes = [self.op.g.shape(p) for p in parts]
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return self.put(self.op.Concat(*parts, axis=axis), out)


@vjp_rule("LSTM", "GRU", "RNN", multi_output=True)
def _vjp_recurrent(op: Emitter, node: onnx.NodeProto,
                   gys: Sequence[str | None], needs: Needs) -> Grads:
    """Unroll over the static sequence length, then run the reverse pass over the unrolled ops."""
    from ..reverse import differentiate  # the driver imports the rules: import it late

    start = len(op.nodes)
    outs = _Unroller(op, node).run()
    unrolled = op.nodes[start:]
    seeds = {y: gy for y, gy in zip(outs, gys, strict=False) if y and gy is not None}
    wrt = list(dict.fromkeys(i for i in node.input if i and i in needs))
    if node.input[4:5] and node.input[4] in needs:
        msg = f"{node.op_type} {node.name!r}: sequence_lens depends on the input"
        raise NotImplementedError(msg)
    grads = differentiate(op, unrolled, seeds, wrt)
    seen: set[str] = set()
    result: list[str | None] = []
    for name in node.input:
        if name in grads and name not in seen:
            seen.add(name)
            result.append(grads[name])
        else:
            result.append(None)
    return result
