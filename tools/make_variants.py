"""Write models/variants/: quantized, half-precision and onnxruntime-optimized fixture copies.

Each file is a copy of a models/*.onnx fixture (tools/make_models.py) made by the standard tool
a user would run, so the tests see what those tools really emit:

    python tools/make_variants.py        # rewrites models/variants/*.onnx; prints name, sha256

- `*_qdq.onnx`: onnxruntime.quantization.quantize_static, QDQ format, int8 activations and
  weights (per channel), calibrated on 16 seeded normal inputs (MinMax).
- `*_fp16.onnx`: onnxruntime.transformers.float16.convert_float_to_float16 (float16 I/O).
- `*_bf16.onnx`: every float32 tensor retyped to bfloat16 (neuromask_onnx.precision.retype);
  no converter writes bfloat16 models, and onnxruntime's CPU provider cannot run most of them.
- `*_ort.onnx`: saved by onnxruntime with SessionOptions.optimized_model_filepath at
  ORT_ENABLE_EXTENDED (FusedConv, FusedGemm, FusedMatMul, QuickGelu).
- `tiny_vit_transformers.onnx`: onnxruntime.transformers.optimizer (model_type "vit"):
  SkipLayerNormalization.

The outputs depend on the onnxruntime version (1.32.0 wrote the sha256 in models/README.md).
They live in a subfolder so that tests/test_fixtures.py, which checks every models/*.onnx
against finite differences of itself, does not pick them up: a quantized model has no
derivative of its own, and the onnxruntime-only ops do not run on onnx's reference evaluator.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from neuromask_onnx.graph import graph_inputs
from neuromask_onnx.precision import retype

MODELS = Path(__file__).resolve().parent.parent / "models"
OUT = MODELS / "variants"


def _static_input(model: onnx.ModelProto, batch: int = 2) -> tuple[str, list[int]]:
    vi = graph_inputs(model)[0]
    dims = [d.dim_value if d.HasField("dim_value") else batch for d in
            vi.type.tensor_type.shape.dim]
    return vi.name, dims


def quantized(name: str) -> onnx.ModelProto:
    """quantize_static in QDQ format, int8, per-channel weights, seeded calibration data."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    src = MODELS / f"{name}.onnx"
    x, shape = _static_input(onnx.load(str(src)))
    rng = np.random.default_rng(7)
    batches = [{x: rng.standard_normal(shape).astype(np.float32)} for _ in range(8)]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        per_channel=True)
        return onnx.load(str(out))


def float16(name: str) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = onnx.load(str(MODELS / f"{name}.onnx"))
    return convert_float_to_float16(m, keep_io_types=False)  # type: ignore[no-any-return]


def bfloat16(name: str) -> onnx.ModelProto:
    return retype(onnx.load(str(MODELS / f"{name}.onnx")), {TensorProto.FLOAT},
                  TensorProto.BFLOAT16)


def ort_optimized(name: str) -> onnx.ModelProto:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "opt.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(out)
        ort.InferenceSession(str(MODELS / f"{name}.onnx"), opts,
                             providers=["CPUExecutionProvider"])
        return onnx.load(str(out))


def transformers_optimized(name: str) -> onnx.ModelProto:
    from onnxruntime.transformers import optimizer

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    opt = optimizer.optimize_model(str(MODELS / f"{name}.onnx"), model_type="vit", num_heads=0,
                                   hidden_size=0, opt_level=0)
    with tempfile.TemporaryDirectory() as tmp:  # saving adds the com.microsoft opset import
        out = Path(tmp) / "opt.onnx"
        opt.save_model_to_file(str(out))
        return onnx.load(str(out))


VARIANTS = {
    "cnn_nchw_qdq": lambda: quantized("cnn_nchw"),
    "timeseries_conv1d_qdq": lambda: quantized("timeseries_conv1d"),
    "cnn_nchw_fp16": lambda: float16("cnn_nchw"),
    "tiny_vit_fp16": lambda: float16("tiny_vit"),
    "cnn_nchw_bf16": lambda: bfloat16("cnn_nchw"),
    "cnn_nchw_ort": lambda: ort_optimized("cnn_nchw"),
    "cnn_nhwc_tf_ort": lambda: ort_optimized("cnn_nhwc_tf"),
    "tabular_mlp_ort": lambda: ort_optimized("tabular_mlp"),
    "tiny_vit_ort": lambda: ort_optimized("tiny_vit"),
    "tiny_vit_transformers": lambda: transformers_optimized("tiny_vit"),
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, make in VARIANTS.items():
        model = make()
        data = model.SerializeToString()
        (OUT / f"{name}.onnx").write_bytes(data)
        print(f"{name}.onnx {len(data)} bytes sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
