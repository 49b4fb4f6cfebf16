"""Cosine between a float32 classifier's mask gradient and those of its int8 and float16 copies.

On real photos (skimage.data), each at the float model's top-1 class, with a uniform mask of
0.5: the question is whether the gradient of the quantized (straight-through rule) and the
half-precision model points the way the float model's does.

    python tools/export_efficientnet_lite0.py -o /tmp/effnet.onnx
    python tools/measure_variants.py /tmp/effnet.onnx
    python tools/measure_variants.py --half-fixtures   # models/variants/ half models vs float64

The int8 copy is onnxruntime.quantization.quantize_static (QDQ, int8, per-channel weights,
MinMax) calibrated on other photos (retina, colorwheel, logo) and the mirrored test photos;
the float16 copy is onnxruntime.transformers.float16.convert_float_to_float16.

The noise floor: the float model's own pixel gradient, at the photo plus Gaussian noise of
one int8 input step (sigma 1/128 in the model's units, about one grey level), has a cosine of
only about 0.46 with the gradient at the photo itself (EfficientNet-Lite0). A pixel gradient
of a deep network is that unstable, so no quantized copy can agree with it better than its
own float model does under a grey level of noise; the `noise` column prints this floor.
The rounding floor: the float model with its weights rounded to the int8 per-channel grid
(step = max |w| / 127 per output channel, what quantize_static's symmetric int8 weights use),
activations left in float, and the float model with each weight moved by a random amount
within half that step (three seeds). On EfficientNet-Lite0 the first reproduces the int8
copy's cell cosine (the weights' rounding, not the activations' or a rule, is what moves the
gradient), and the second shows that any rounding of that size moves it about as far.
`--maps` compares what a user sees, the default NeuroMask maps (centred cosine and Spearman
rank correlation of the int8 map against the float map), next to the same floor.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from neuromask_onnx import instrument, io_names

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
          "immunohistochemistry"]
CALIBRATION = ["retina", "colorwheel", "logo"]


def photo(name: str, size: int = 224) -> np.ndarray:
    """[3, size, size] float32: centre crop 0.875, resize, (pixel - 127) / 128 (TFLite)."""
    import skimage.data
    from PIL import Image

    img = np.asarray(getattr(skimage.data, name)())[..., :3]
    h, w = img.shape[:2]
    side = int(min(h, w) * 0.875)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(img[top:top + side, left:left + side]).resize((size, size),
                                                                          Image.BILINEAR)
    return ((np.asarray(crop, np.float32) - 127.0) / 128.0).transpose(2, 0, 1)


def quantize(src: Path, out: Path, batches: list[np.ndarray], name: str) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = iter({name: b[None]} for b in batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    per_channel=True)


def mask_grads(model: onnx.ModelProto | str, x: np.ndarray, target: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    inst = instrument(model, batch_size=len(x))
    ins = {i.name: i for i in inst.graph.input}
    xn = next(k for k in ins if not k.startswith("nm_"))
    types = {k: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
             for k, v in ins.items()}
    mshape = [d.dim_value for d in ins[io_names.MASK].type.tensor_type.shape.dim]
    sess = ort.InferenceSession(inst.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {xn: x.astype(types[xn]), io_names.MASK: np.full(mshape, 0.5, types[io_names.MASK]),
             io_names.TARGET: target}
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    return out[io_names.GRAD_MASK].astype(np.float64), out[io_names.PROBS].astype(np.float64)


def on_cells(g: np.ndarray, cells: int = 14) -> np.ndarray:
    """The gradient with respect to the default NeuroMask's parameters: the pixel mask
    gradient [N, 1, H, W] through the adjoint of its `smooth` upsampling from cells x cells
    (what the optimiser actually follows, `NeuroMaskConfig.mask_cells`)."""
    from neuromask_onnx.mask import apply, upsample_matrix

    mats = [None, *(upsample_matrix(n, cells, "smooth") for n in g.shape[2:])]
    return apply(mats, g, adjoint=True)


def rounded_weights(model: onnx.ModelProto, rng: np.random.Generator | None
                    ) -> onnx.ModelProto:
    """A copy whose float32 weights (rank >= 2: Conv, Gemm, MatMul) are rounded to the int8
    per-output-channel grid (rng None) or moved by U(-step/2, step/2) on that grid."""
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        w = numpy_helper.to_array(t)
        if w.dtype != np.float32 or w.ndim < 2:
            continue
        step = np.abs(w.reshape(len(w), -1)).max(axis=1) / 127.0
        step = np.where(step > 0, step, 1.0).reshape([-1] + [1] * (w.ndim - 1))
        moved = (np.round(w / step) * step if rng is None
                 else w + step * rng.uniform(-0.5, 0.5, w.shape))
        t.CopyFrom(numpy_helper.from_array(moved.astype(np.float32), t.name))
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> list[float]:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return [float(u @ v / np.linalg.norm(u) / np.linalg.norm(v)) for u, v in zip(a, b,
                                                                                   strict=True)]


def half_fixture_errors() -> None:
    """<u, nm_grad_mask> of each half-precision fixture vs float64 central differences of the
    same weights (tests/test_variants.py asserts what this prints)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import test_variants as tv

    for name in ("cnn_nchw_fp16", "tiny_vit_fp16", "cnn_nchw_bf16"):
        analytic, numeric = tv.half_check(name)
        print(f"{name:16s} <u, grad> {analytic:.9f}  float64 difference {numeric:.9f}  "
              f"relative error {abs(analytic - numeric) / abs(numeric):.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, nargs="?")
    ap.add_argument("--half-fixtures", action="store_true",
                    help="check the half-precision fixtures against float64 differences")
    ap.add_argument("--maps", action="store_true",
                    help="also compare the default NeuroMask maps (about 5 s per photo and model)")
    args = ap.parse_args()
    if args.half_fixtures:
        half_fixture_errors()
        return
    if args.model is None:
        ap.error("pass a float32 model (or --half-fixtures)")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src = onnx.load(str(args.model))
    name = src.graph.input[0].name
    x = np.stack([photo(p) for p in PHOTOS])
    sess = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    target = np.argmax(sess.run(None, {name: x})[0], axis=1).astype(np.int64)
    g32, _ = mask_grads(src, x, target)
    noisy = (x + np.random.default_rng(0).normal(0, 1 / 128, x.shape)).astype(np.float32)
    gn, _ = mask_grads(src, noisy, target)
    with tempfile.TemporaryDirectory() as tmp:
        qpath = Path(tmp) / "int8.onnx"
        quantize(args.model, qpath, [photo(p) for p in CALIBRATION] + [b[:, :, ::-1] for b in x],
                 name)
        g8, p8 = mask_grads(str(qpath), x, target)
        if args.maps:
            compare_maps(args.model, qpath, x, noisy, target)
    g16, p16 = mask_grads(convert_float_to_float16(src, keep_io_types=False), x, target)
    gr, _ = mask_grads(rounded_weights(src, None), x, target)
    gms = [mask_grads(rounded_weights(src, np.random.default_rng(s)), x, target)[0]
           for s in range(3)]
    print("pixel gradient at a uniform mask of 0.5; noise = fp32 at the photo + N(0, 1/128)")
    print("photo                 class  cos(int8, fp32)  cos(fp16, fp32)  cos(noise, fp32)  "
          "top1 int8/fp16")
    for i, p in enumerate(PHOTOS):
        c8, c16, cn = cosines(g8, g32)[i], cosines(g16, g32)[i], cosines(gn, g32)[i]
        agree = f"{int(np.argmax(p8[i]) == target[i])}/{int(np.argmax(p16[i]) == target[i])}"
        print(f"{p:22s}{target[i]:5d}  {c8:15.4f}  {c16:15.6f}  {cn:16.4f}  {agree}")
    print(f"mean                         {np.mean(cosines(g8, g32)):15.4f}  "
          f"{np.mean(cosines(g16, g32)):15.6f}  {np.mean(cosines(gn, g32)):16.4f}")
    c8, c16, cn = (on_cells(g) for g in (g8, g16, gn))
    c32 = on_cells(g32)
    cos = {k: cosines(c, c32) for k, c in (("int8", c8), ("fp16", c16), ("noise", cn),
                                            ("rounded", on_cells(gr)))}
    cos["moved"] = list(np.mean([cosines(on_cells(g), c32) for g in gms], axis=0))
    print("\nthe same gradients on the default 14 x 14 mask cells (through the upsampling's "
          "adjoint); rounded = fp32 with int8-rounded weights, moved = weights moved within "
          "half a step (mean of 3 seeds)")
    print("photo                 class  cos(int8, fp32)  cos(fp16, fp32)  cos(noise, fp32)  "
          "cos(rounded, fp32)  cos(moved, fp32)")
    widths = {"int8": ".4f", "fp16": ".6f", "noise": ".4f", "rounded": ".4f", "moved": ".4f"}
    cols = {"int8": 15, "fp16": 15, "noise": 16, "rounded": 18, "moved": 16}

    def row(values: dict[str, float]) -> str:
        return "  ".join(f"{values[k]:{cols[k]}{widths[k]}}" for k in cols)

    for i, p in enumerate(PHOTOS):
        print(f"{p:22s}{target[i]:5d}  " + row({k: v[i] for k, v in cos.items()}))
    print("mean                         " + row({k: float(np.mean(v)) for k, v in cos.items()}))


def compare_maps(model: Path, qpath: Path, x: np.ndarray, noisy: np.ndarray,
                 target: np.ndarray) -> None:
    """The default NeuroMask map of the int8 copy, and of the float model on the noisy photos,
    against the float model's map: centred cosine and Spearman rank correlation."""
    import warnings

    from scipy.stats import spearmanr

    from neuromask_onnx.baselines import Classifier
    from neuromask_onnx.optimize import NeuroMaskConfig

    def maps(path: Path, xs: np.ndarray) -> list[np.ndarray]:
        nm = Classifier(path, provider="cpu", batch_size=16).neuromask(NeuroMaskConfig())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [np.asarray(nm.attribute(xs[i], int(target[i])).mask, np.float64).ravel()
                    for i in range(len(xs))]

    m32, m8, mn = maps(model, x), maps(qpath, x), maps(model, noisy)
    print("default NeuroMask map vs the float model's: centred cosine / Spearman")
    print("photo                 int8 vs fp32     fp32 + noise vs fp32")
    rows = []
    for i, p in enumerate(PHOTOS):
        r = []
        for m in (m8[i], mn[i]):
            a, b = m - m.mean(), m32[i] - m32[i].mean()
            r += [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)),
                  float(spearmanr(m, m32[i])[0])]
        rows.append(r)
        print(f"{p:22s}{r[0]:6.3f} / {r[1]:6.3f}  {r[2]:6.3f} / {r[3]:6.3f}")
    mean = np.mean(rows, axis=0)
    print(f"mean                  {mean[0]:6.3f} / {mean[1]:6.3f}  {mean[2]:6.3f} / {mean[3]:6.3f}")


if __name__ == "__main__":
    main()
