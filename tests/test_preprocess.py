"""Image and tensor loading: every format, mode and policy, on files made in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from neuromask_onnx.errors import InputError, ModelContractError
from neuromask_onnx.preprocess import (
    InputSpec,
    Preprocessing,
    describe_input,
    expand_paths,
    fit_image,
    load_inputs,
    preprocessing_preset,
    read_image,
)

NCHW = InputSpec("x", (None, 3, 8, 10), "NCHW")
RAW = Preprocessing(resize="stretch", scale=1.0, mean=(0.0,), std=(1.0,))


def _gradient(h: int = 8, w: int = 10) -> np.ndarray:
    """An RGB test card: red grows down, green grows right, blue constant."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    img[..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    img[..., 2] = 77
    return img


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tiff", ".webp"])
def test_lossless_formats_round_trip(suffix: str, tmp_path: Path) -> None:
    card = _gradient()
    path = tmp_path / f"card{suffix}"
    kwargs = {"lossless": True} if suffix == ".webp" else {}
    Image.fromarray(card).save(path, **kwargs)
    [x] = load_inputs([path], NCHW, RAW)
    assert x.tensor.shape == (3, 8, 10)
    assert x.tensor.dtype == np.float32
    np.testing.assert_allclose(x.tensor, card.transpose(2, 0, 1), atol=0.5)


def test_jpeg_is_close(tmp_path: Path) -> None:
    card = _gradient()
    Image.fromarray(card).save(tmp_path / "c.jpg", quality=98)
    [x] = load_inputs([tmp_path / "c.jpg"], NCHW, RAW)
    assert np.abs(x.tensor - card.transpose(2, 0, 1)).mean() < 6


def test_greyscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    grey = np.arange(80, dtype=np.uint8).reshape(8, 10) * 3
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    [x] = load_inputs([tmp_path / "g.png"], NCHW, RAW)
    for c in range(3):
        np.testing.assert_array_equal(x.tensor[c], grey)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_greyscale_keeps_its_precision(suffix: str, tmp_path: Path) -> None:
    grey = (np.arange(80, dtype=np.uint16).reshape(8, 10) * 800 + 3)
    Image.fromarray(grey).save(tmp_path / f"deep{suffix}")
    px, _, mode = read_image(tmp_path / f"deep{suffix}")
    assert mode.startswith("I")
    np.testing.assert_allclose(px[..., 0], grey / 257.0, rtol=1e-6)
    assert px.max() <= 255.0


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((8, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :5, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    [x] = load_inputs([tmp_path / "a.png"], NCHW, RAW)
    np.testing.assert_allclose(x.tensor[:, :, :5], np.array([200, 0, 0])[:, None, None]
                               * np.ones((3, 8, 5)))
    np.testing.assert_allclose(x.tensor[:, :, 5:], 255.0)


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    card = _gradient(8, 10)  # stored landscape 8 x 10
    img = Image.fromarray(card)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif, quality=98)
    px, shown, _ = read_image(tmp_path / "r.jpg")
    assert px.shape[:2] == (10, 8)
    assert shown.size == (8, 10)
    # displayed = stored rotated clockwise: displayed row 0 is stored column 0 (green = 0)
    want = np.rot90(card, k=-1)
    assert np.abs(px - want).mean() < 6


def test_resize_policies_and_geometry() -> None:
    px = np.zeros((100, 200, 3), np.float32)
    px[:, 100:] = 255.0
    _, g = fit_image(px, (50, 50), Preprocessing(resize="stretch"))
    assert (g.resized, g.top, g.left) == ((50, 50), 0, 0)
    _, g = fit_image(px, (56, 56), Preprocessing(resize="center-crop", crop_fraction=0.875))
    assert g.resized == (64, 128)  # shorter side 56 / 0.875 = 64, like Resize(256)+Crop(224)
    assert (g.top, g.left) == (4, 36)
    pad, g = fit_image(px, (50, 50), Preprocessing(resize="pad"))
    assert g.resized == (25, 50)
    assert np.isnan(pad[0, 0, 0])
    assert g.top == -12
    back = g.to_original(np.ones((50, 50), np.float32))
    assert back.shape == (100, 200)
    assert back.min() == pytest.approx(1.0)


def test_normalisation_presets(tmp_path: Path) -> None:
    card = _gradient()
    Image.fromarray(card).save(tmp_path / "c.png")
    tv = preprocessing_preset("torchvision-imagenet").replace(resize="stretch")
    [x] = load_inputs([tmp_path / "c.png"], NCHW, tv)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    want = (card / 255.0 - mean) / std
    np.testing.assert_allclose(x.tensor, want.transpose(2, 0, 1), atol=1e-5)
    caffe = preprocessing_preset("caffe").replace(resize="stretch")
    [x] = load_inputs([tmp_path / "c.png"], InputSpec("x", (1, 8, 10, 3), "NHWC"), caffe)
    want = card[..., ::-1] - np.array([103.939, 116.779, 123.68])
    np.testing.assert_allclose(x.tensor, want, atol=1e-4)
    inc = preprocessing_preset("inception").replace(resize="stretch")
    [x] = load_inputs([tmp_path / "c.png"], NCHW, inc)
    assert x.tensor.min() >= -1.0
    assert x.tensor.max() <= 1.0
    np.testing.assert_allclose(x.tensor[2], 77 / 127.5 - 1, atol=1e-6)


def test_npy_tensors_and_directories(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    one = rng.standard_normal((3, 8, 10)).astype(np.float32)
    many = rng.standard_normal((2, 3, 8, 10))
    np.save(tmp_path / "a.npy", one)
    np.save(tmp_path / "b.npy", many)
    Image.fromarray(_gradient()).save(tmp_path / "c.png")
    (tmp_path / "notes.txt").write_text("ignored")
    assert [p.name for p in expand_paths([tmp_path])] == ["a.npy", "b.npy", "c.png"]
    xs = load_inputs([tmp_path], NCHW, RAW)
    assert [x.name for x in xs] == ["a", "b-0", "b-1", "c"]
    np.testing.assert_array_equal(xs[0].tensor, one)
    np.testing.assert_allclose(xs[2].tensor, many[1], rtol=1e-6)
    assert xs[0].image is None
    assert xs[3].image is not None


def test_user_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_inputs([tmp_path / "missing.png"], NCHW, RAW)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read image"):
        load_inputs([tmp_path / "bad.png"], NCHW, RAW)
    np.save(tmp_path / "wrong.npy", np.zeros((3, 9, 9), np.float32))
    with pytest.raises(InputError, match=r"has shape \[3, 9, 9\]"):
        load_inputs([tmp_path / "wrong.npy"], NCHW, RAW)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image"):
        load_inputs([tmp_path / "empty"], NCHW, RAW)
    Image.fromarray(_gradient()).save(tmp_path / "ok.png")
    with pytest.raises(InputError, match="--size"):
        load_inputs([tmp_path / "ok.png"], InputSpec("x", (None, 3, None, None), "NCHW"), RAW)
    with pytest.raises(InputError, match="--mean"):
        load_inputs([tmp_path / "ok.png"], NCHW, RAW.replace(mean=(1.0, 2.0)))


def _model(inputs: list[tuple[str, int, list[object]]]) -> onnx.ModelProto:
    vis = [helper.make_tensor_value_info(n, t, d) for n, t, d in inputs]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("Identity", [inputs[0][0]], ["y"])
    return helper.make_model(helper.make_graph([node], "g", vis, [out]))


def test_describe_input_reads_size_and_layout() -> None:
    spec = describe_input(_model([("img", TensorProto.FLOAT, ["N", 3, 224, 224])]))
    assert (spec.layout, spec.hw, spec.channels) == ("NCHW", (224, 224), 3)
    spec = describe_input(_model([("img", TensorProto.FLOAT, [1, 299, 299, 3])]))
    assert (spec.layout, spec.dims[0]) == ("NHWC", 1)
    assert describe_input(_model([("seq", TensorProto.FLOAT, ["N", 100])])).layout == "NA"
    with pytest.raises(ModelContractError, match="--input"):
        describe_input(_model([("a", TensorProto.FLOAT, [1, 3]), ("b", TensorProto.FLOAT, [1, 3])]))
    with pytest.raises(ModelContractError, match="not float"):
        describe_input(_model([("ids", TensorProto.INT64, [1, 3])]))
    with pytest.raises(ModelContractError, match="--layout"):
        describe_input(_model([("img", TensorProto.FLOAT, [1, 3, 64, 3])]))
