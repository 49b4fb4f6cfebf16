"""Put PNGs side by side at one height (how docs/overlays.png is made from the overlays that
`neuromask explain` writes).

    neuromask explain efficientnet_lite0.onnx cat.png astronaut.png coffee.png rocket.jpg -o ex
    python tools/montage.py docs/overlays.png ex/cat.overlay.png ex/astronaut.overlay.png \\
        ex/coffee.overlay.png ex/rocket.overlay.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def montage(paths: list[Path], height: int = 256, gap: int = 4) -> Image.Image:
    ims = [Image.open(p).convert("RGB") for p in paths]
    ims = [im.resize((round(im.width * height / im.height), height)) for im in ims]
    out = Image.new("RGB", (sum(im.width for im in ims) + gap * (len(ims) - 1), height), "white")
    x = 0
    for im in ims:
        out.paste(im, (x, 0))
        x += im.width + gap
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("images", type=Path, nargs="+")
    ap.add_argument("--height", type=int, default=256)
    args = ap.parse_args()
    montage(args.images, args.height).save(args.out)


if __name__ == "__main__":
    main()
