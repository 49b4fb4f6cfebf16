"""CUDA execution provider: same masks as the CPU, inputs kept on the device (I/O binding).

These run only where onnxruntime-gpu finds a GPU; CI has none, so there they skip. Asking
for CUDA where it is missing is a user error with one clear line, tested everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from neuromask_onnx import InputError, NeuroMask, NeuroMaskConfig


def _cuda_works() -> bool:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        sess = ort.InferenceSession(
            str(Path(__file__).resolve().parents[1] / "models" / "cnn_nchw.onnx"),
            providers=["CUDAExecutionProvider"])
    except Exception:  # noqa: BLE001  (a driver or library problem means: no usable GPU)
        return False
    return "CUDAExecutionProvider" in sess.get_providers()


needs_gpu = pytest.mark.skipif(not _cuda_works(), reason="no CUDA execution provider with a GPU")


@pytest.mark.gpu
@needs_gpu
def test_cuda_mask_matches_cpu(models_dir: Path, rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 32, 32)).astype(np.float32)
    config = NeuroMaskConfig(steps=20, seed=3)
    cpu = NeuroMask(models_dir / "cnn_nchw.onnx", config, provider="cpu").attribute(x)
    gpu = NeuroMask(models_dir / "cnn_nchw.onnx", config, provider="cuda").attribute(x)
    assert gpu.provider == "CUDAExecutionProvider"
    assert gpu.target == cpu.target
    np.testing.assert_allclose(gpu.mask, cpu.mask, atol=1e-4)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime has the CUDA provider")
def test_asking_for_cuda_without_it_is_a_clear_error(models_dir: Path) -> None:
    with pytest.raises(InputError, match="onnxruntime-gpu"):
        NeuroMask(models_dir / "cnn_nchw.onnx", NeuroMaskConfig(steps=1), provider="cuda")
