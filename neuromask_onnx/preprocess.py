"""Read the user's inputs and turn them into the tensors the model takes.

Images (PNG, JPEG, BMP, TIFF, WebP; greyscale, palette, RGBA, 16-bit, EXIF-rotated) become
float pixels in [0, 255] (16-bit values are divided by 257, transparency is composited on
white), are resized to the model's size by a policy (stretch, center-crop as torchvision's
Resize + CenterCrop, or pad), then x = (pixel * scale - mean) / std in the model's channel
order and layout. `.npy` files are taken as already-preprocessed tensors, with or without a
leading sample axis. A directory expands to its image and `.npy` files, sorted by name.

The input's size and layout are read from the model where it declares them (`InputSpec`, by
`contract.describe_input`, re-exported here); `Geometry` keeps
how the model's pixels map back to the original image so masks can be shown at its resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from PIL import Image, ImageOps, UnidentifiedImageError

from .contract import InputSpec, describe_input  # describe_input: re-exported, as before
from .errors import InputError, ModelContractError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
TENSOR_SUFFIXES = frozenset({".npy"})
Resize = Literal["stretch", "center-crop", "pad"]
MAX_PIXELS = 50_000_000
"""Images above this many pixels are refused from their header, before they are decoded
(a 12000 x 12000 PNG needs tens of GB on the way to the model); `--max-pixels` raises it."""


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model tensor: x = (pixel * scale - mean) / std."""

    size: tuple[int, int] | None = None
    """Model (height, width); None reads it from the model."""
    resize: Resize = "center-crop"
    """stretch to size; center-crop (cover then crop the centre); pad (fit then pad)."""
    crop_fraction: float = 0.875
    """center-crop: the crop is this fraction of the resized image (224 of 256)."""
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: str | None = None
    """NCHW or NHWC; None reads it from the model."""

    def __post_init__(self) -> None:
        if self.resize not in ("stretch", "center-crop", "pad"):
            msg = f"resize policy must be stretch, center-crop or pad, got {self.resize!r}"
            raise InputError(msg)
        if not 0 < self.crop_fraction <= 1:
            msg = f"crop fraction must be in (0, 1], got {self.crop_fraction}"
            raise InputError(msg)
        if any(s == 0 for s in self.std):
            msg = "--std values must be non-zero"
            raise InputError(msg)
        if self.channel_order not in ("RGB", "BGR"):
            msg = f"channel order must be RGB or BGR, got {self.channel_order!r}"
            raise InputError(msg)

    def replace(self, **changes: Any) -> Preprocessing:
        import dataclasses

        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


PREPROCESSING_PRESETS: dict[str, Preprocessing] = {
    "torchvision-imagenet": Preprocessing(),
    "inception": Preprocessing(scale=1 / 127.5, mean=(1.0,), std=(1.0,)),
    "caffe": Preprocessing(scale=1.0, mean=(103.939, 116.779, 123.68), std=(1.0,),
                           channel_order="BGR"),
    "raw": Preprocessing(resize="stretch", scale=1.0, mean=(0.0,), std=(1.0,)),
}


def preprocessing_preset(name: str) -> Preprocessing:
    try:
        return PREPROCESSING_PRESETS[name]
    except KeyError:
        msg = f"unknown preprocessing preset {name!r}; choose {', '.join(PREPROCESSING_PRESETS)}"
        raise InputError(msg) from None


def model_preprocessing(model: onnx.ModelProto) -> Preprocessing | None:
    """The preprocessing a model carries in its metadata, if any.

    Key `neuromask.preprocess`: a JSON object of `Preprocessing` fields (our export tools
    stamp it), so `neuromask explain` needs no preprocessing flags for such a model.
    """
    import json

    props = {p.key: p.value for p in model.metadata_props}
    raw = props.get("neuromask.preprocess")
    if raw is None:
        return None
    try:
        fields = json.loads(raw)
        for key in ("size", "mean", "std"):
            if key in fields:
                fields[key] = tuple(fields[key])
        return Preprocessing(**fields)
    except (ValueError, TypeError) as exc:
        msg = f"the model's neuromask.preprocess metadata is malformed ({exc}); pass --preprocess"
        raise InputError(msg) from None


def resolve_preprocessing(name: str | None, model: onnx.ModelProto) -> Preprocessing:
    """A named preset if given, else what the model carries, else torchvision-imagenet."""
    if name is not None:
        return preprocessing_preset(name)
    return model_preprocessing(model) or PREPROCESSING_PRESETS["torchvision-imagenet"]


def model_labels(model: onnx.ModelProto) -> list[str] | None:
    """Class names from the model's metadata (`neuromask.labels`, a JSON list), if any."""
    import json

    raw = {p.key: p.value for p in model.metadata_props}.get("neuromask.labels")
    if raw is None:
        return None
    try:
        labels = json.loads(raw)
    except ValueError:
        return None
    return [str(v) for v in labels] if isinstance(labels, list) else None


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Geometry:
    """Model pixel (y, x) shows resized-image pixel (y + top, x + left)."""

    original: tuple[int, int]
    resized: tuple[int, int]
    top: int
    left: int

    def to_original(self, mask: np.ndarray) -> np.ndarray:
        """A model-resolution [H, W] map on the original image (0 where it was cropped off)."""
        rh, rw = self.resized
        h, w = mask.shape
        canvas = np.zeros((rh, rw), np.float32)
        y0, x0 = max(0, self.top), max(0, self.left)
        y1, x1 = min(rh, self.top + h), min(rw, self.left + w)
        canvas[y0:y1, x0:x1] = mask[y0 - self.top:y1 - self.top, x0 - self.left:x1 - self.left]
        return _resize_plane(canvas, self.original)


def _resize_plane(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if a.shape == size:
        return a.astype(np.float32)
    img = Image.fromarray(a.astype(np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR), np.float32)


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, Image.Image, str]:
    """Pixels [H, W, 3] float32 in [0, 255] RGB, the image for display, and its mode.

    The size is checked from the header, before decoding: above `max_pixels` is one
    InputError line (PIL's own decompression-bomb check is replaced by this one).
    """
    import warnings

    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # PIL's own check, replaced by the precise one below
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened:
            w, h = opened.size
            if w * h > max_pixels:
                msg = (f"image {str(path)!r} is {w} x {h} = {w * h / 1e6:.1f} megapixels, above "
                       f"the limit of {max_pixels / 1e6:g}; shrink it or raise --max-pixels")
                raise InputError(msg)
            opened.load()
            img = ImageOps.exif_transpose(opened) or opened
            img.load()
    except Image.DecompressionBombError:
        msg = (f"image {str(path)!r} decompresses to more than {max_pixels / 1e6:g} megapixels "
               "(a decompression bomb?); raise --max-pixels if it is genuine")
        raise InputError(msg) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        msg = f"cannot read image {str(path)!r} ({type(exc).__name__}); is it a valid image?"
        raise InputError(msg) from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(img, dtype=np.float64)
        grey = grey / 257.0 if (mode.startswith("I;16") or grey.max(initial=0) > 255) else grey
        px = np.repeat(np.clip(grey, 0, 255)[..., None], 3, axis=2)
    elif mode == "F":
        px = np.repeat(np.clip(np.asarray(img, np.float64), 0, 255)[..., None], 3, axis=2)
    elif mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
            mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), np.float64)
        alpha = rgba[..., 3:] / 255.0
        px = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)  # composite on white
    else:
        px = np.asarray(img.convert("RGB"), np.float64)
    px = px.astype(np.float32)
    shown = Image.fromarray(np.clip(np.rint(px), 0, 255).astype(np.uint8), mode="RGB")
    return px, shown, mode


def fit_image(px: np.ndarray, size: tuple[int, int], prep: Preprocessing,
              ) -> tuple[np.ndarray, Geometry]:
    """Resize/crop/pad pixels [H0, W0, C] to `size` by the policy; returns pixels and geometry."""
    h0, w0 = px.shape[:2]
    h, w = size
    if prep.resize == "stretch":
        rh, rw, top, left = h, w, 0, 0
    elif prep.resize == "center-crop":
        s = max(h / h0, w / w0) / prep.crop_fraction
        rh, rw = max(h, round(h0 * s)), max(w, round(w0 * s))
        top, left = round((rh - h) / 2), round((rw - w) / 2)
    else:
        s = min(h / h0, w / w0)
        rh, rw = min(h, max(1, round(h0 * s))), min(w, max(1, round(w0 * s)))
        top, left = -((h - rh) // 2), -((w - rw) // 2)
    resized = np.stack([_resize_plane(px[..., c], (rh, rw)) for c in range(px.shape[2])], -1)
    out = np.full((h, w, px.shape[2]), np.nan, np.float32)  # NaN = padding, set after normalising
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(rh, top + h), min(rw, left + w)
    out[y0 - top:y1 - top, x0 - left:x1 - left] = resized[y0:y1, x0:x1]
    return out, Geometry((h0, w0), (rh, rw), top, left)


def normalize(px: np.ndarray, prep: Preprocessing, channels: int) -> np.ndarray:
    """RGB pixels [H, W, 3] -> (p * scale - mean) / std with `channels` channels, HWC."""
    if channels == 1:
        px = (px @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]  # ITU-R 601 luma
    elif channels == 3:
        px = px[..., ::-1] if prep.channel_order == "BGR" else px
    else:
        msg = f"the model takes {channels} channels; images give 1 or 3 (use .npy tensors)"
        raise ModelContractError(msg)
    mean = np.asarray(prep.mean, np.float32)
    std = np.asarray(prep.std, np.float32)
    for name, v in (("--mean", mean), ("--std", std)):
        if v.size not in (1, channels):
            msg = f"{name} has {v.size} values but the model takes {channels} channel(s)"
            raise InputError(msg)
    x = (px * np.float32(prep.scale) - mean) / std
    out: np.ndarray = np.nan_to_num(x, nan=0.0).astype(np.float32)  # padding: 0 once normalised
    return out


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class LoadedInput:
    """One model-ready input, without the batch axis, and where it came from."""

    path: Path
    name: str
    tensor: np.ndarray
    image: Image.Image | None = None
    geometry: Geometry | None = None
    record: dict[str, Any] = field(default_factory=dict)


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given; a directory becomes its image and .npy files, sorted by name."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in IMAGE_SUFFIXES | TENSOR_SUFFIXES)
            if not found:
                msg = f"directory {str(p)!r} has no image or .npy files"
                raise InputError(msg)
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            msg = f"input {str(p)!r} does not exist"
            raise InputError(msg)
    return out


def load_inputs(paths: Sequence[str | Path], spec: InputSpec,
                prep: Preprocessing | None = None,
                max_pixels: int = MAX_PIXELS) -> list[LoadedInput]:
    """Load every input (all errors surface here, before any work starts)."""
    prep = prep or Preprocessing()
    loaded: list[LoadedInput] = []
    for path in expand_paths(paths):
        if path.suffix.lower() in TENSOR_SUFFIXES:
            loaded.extend(_load_npy(path, spec))
        else:
            loaded.append(load_image(path, spec, prep, max_pixels))
    # Shapes differ only where the model's dims are dynamic: each shape is then instrumented
    # on its own (NeuroMask and Classifier group their inputs by shape).
    return loaded


def _load_npy(path: Path, spec: InputSpec) -> list[LoadedInput]:
    try:  # memory-mapped: the shape is checked before anything is read
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        msg = f"cannot read {str(path)!r} as a .npy array ({type(exc).__name__})"
        raise InputError(msg) from None
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        msg = f"{str(path)!r} holds {arr.dtype} values; the model takes real numbers"
        raise InputError(msg)
    want = spec.dims[1:]

    def fits(shape: tuple[int, ...]) -> bool:
        return len(shape) == len(want) and all(w is None or w == s for w, s in
                                               zip(want, shape, strict=True))

    shown = "x".join("?" if d is None else str(d) for d in want)
    if fits(arr.shape):
        arrays = [arr]
    elif arr.ndim == len(want) + 1 and fits(arr.shape[1:]):
        arrays = list(arr)
    else:
        msg = (f"{str(path)!r} has shape {list(arr.shape)}, but input {spec.name!r} takes "
               f"{shown} (optionally with a leading sample axis); save it in the model's layout")
        raise InputError(msg)
    if not all(np.isfinite(a).all() for a in arrays):
        msg = (f"{str(path)!r} holds NaN or infinite values; the model needs finite numbers "
               "(replace them, e.g. with np.nan_to_num, and save again)")
        raise InputError(msg)
    many = len(arrays) > 1
    out = []
    for i, a in enumerate(arrays):
        name = f"{path.stem}-{i}" if many else path.stem
        rec = {"kind": "tensor", "file": str(path), "index": i if many else None,
               "shape": list(a.shape)}
        out.append(LoadedInput(path, name, np.ascontiguousarray(a, np.float32), record=rec))
    return out


def load_image(path: Path, spec: InputSpec, prep: Preprocessing,
               max_pixels: int = MAX_PIXELS) -> LoadedInput:
    if not spec.is_image:
        msg = (f"{str(path)!r} is an image but input {spec.name!r} has layout {spec.layout} "
               f"(shape {list(spec.dims)}); pass a .npy tensor, or --layout NCHW/NHWC")
        raise InputError(msg)
    layout = prep.layout.upper() if prep.layout else spec.layout
    h, w = prep.size if prep.size is not None else spec.hw
    if h is None or w is None:
        msg = f"input {spec.name!r} has a dynamic size {list(spec.dims)}; pass --size H,W"
        raise InputError(msg)
    channels = spec.channels or 3
    px, shown, mode = read_image(path, max_pixels)
    fitted, geometry = fit_image(px, (h, w), prep)
    x = normalize(fitted, prep, channels)
    if layout == "NCHW":
        x = np.ascontiguousarray(x.transpose(2, 0, 1))
    rec = {"kind": "image", "file": str(path), "mode": mode,
           "original_size": [px.shape[0], px.shape[1]], "model_size": [h, w],
           "layout": layout, "channels": channels, "resize": prep.resize,
           "crop_fraction": prep.crop_fraction, "scale": prep.scale, "mean": list(prep.mean),
           "std": list(prep.std), "channel_order": prep.channel_order,
           "resized_to": list(geometry.resized), "offset": [geometry.top, geometry.left]}
    return LoadedInput(path, path.stem, x, shown, geometry, rec)


def load_input(model: onnx.ModelProto | str | Path, path: str | Path, *,
               input_name: str | None = None, preprocess: str | None = None) -> np.ndarray:
    """One image or .npy file as the model's input tensor (without the batch axis).

    Preprocessing: the named preset, else what the model's metadata says, else
    torchvision-imagenet; size and layout come from the model.
    """
    from .graph import load_model

    m = load_model(model)
    spec = describe_input(m, input_name)
    loaded = load_inputs([path], spec, resolve_preprocessing(preprocess, m))
    if len(loaded) != 1:
        msg = f"{str(path)!r} holds {len(loaded)} inputs; use load_inputs for several"
        raise InputError(msg)
    return loaded[0].tensor
