"""Fetch the real photographs that wheels of packages we do not install ship.

`tools/evaluate_methods.py` scores on every real photo found inside wheels. scikit-image,
scikit-learn and matplotlib are installed by the test extra; three more packages ship photos
but would drag in torch or compiled code we do not need, so this script downloads their wheels
with `pip download --no-deps` (the package registry is the only network this project assumes)
and unpacks only the photos:

| package (wheel, pinned) | photos |
|---|---|
| ultralytics 8.4.190 | bus.jpg, zidane.jpg (ultralytics/assets) |
| imgaug 0.4.0 | quokka.jpg |
| mahotas 1.4.19 | luispedro.jpg (mahotas/demos/data) |

mahotas also ships DepartmentStore.jpg, a drawing (not a photograph), and lena.jpg, which is
left out because its subject asked for it to be retired. These photos were added after the default NeuroMask was frozen, so they all join
the test half (`SPLIT` in evaluate_methods.py): none of them can have steered the tuning.

    python tools/wheel_photos.py            # -> /tmp/nm/wheel_photos/*.jpg
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEELS: dict[str, list[str]] = {
    "ultralytics==8.4.190": ["ultralytics/assets/bus.jpg", "ultralytics/assets/zidane.jpg"],
    "imgaug==0.4.0": ["imgaug/quokka.jpg"],
    "mahotas==1.4.19": ["mahotas/demos/data/luispedro.jpg"],
}
DEFAULT_DIR = Path("/tmp/nm/wheel_photos")


def fetch(out: Path) -> list[Path]:
    """Download each pinned wheel (no dependencies) and unpack its photos into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        for req, members in WHEELS.items():
            todo = [m for m in members if not (out / Path(m).name).is_file()]
            if not todo:
                written += [out / Path(m).name for m in members]
                continue
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            "--only-binary", ":all:", "-d", tmp, req], check=True)
            name = req.split("==")[0]
            wheel = next(Path(tmp).glob(f"{name}-*.whl"))
            with zipfile.ZipFile(wheel) as z:
                for m in members:
                    (out / Path(m).name).write_bytes(z.read(m))
            written += [out / Path(m).name for m in members]
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, default=DEFAULT_DIR)
    for p in fetch(ap.parse_args().out):
        print(p)


if __name__ == "__main__":
    main()
