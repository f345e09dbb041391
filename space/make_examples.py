"""Regenerate the demo's example slices: one metastatic and one non-metastatic phantom slice.

    python space/make_examples.py [--seed 7] [--image-size 512]

Run from the repository root (it uses `training.phantom`, which the Space itself never imports).
The slices are written JPEG 2000 lossless so the examples stay well under 1 MB together.
"""

import argparse
import csv
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import pydicom  # noqa: E402
from pydicom.uid import JPEG2000Lossless  # noqa: E402

from training.phantom import generate_phantom  # noqa: E402

EXAMPLES_DIR = HERE / "examples"


def make_examples(seed: int = 7, image_size: int = 512, out_dir: Path = EXAMPLES_DIR) -> list:
    """Write `out_dir/{metastatic,non_metastatic}_phantom.dcm`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate_phantom(tmp, n_per_class=1, seed=seed, image_size=image_size, slices_per_patient=1,
                                    progress=False)
        with open(manifest, newline="") as handle:
            for row in csv.DictReader(handle):
                ds = pydicom.dcmread(Path(tmp) / row["path"])
                ds.compress(JPEG2000Lossless)
                target = out_dir / f"{row['label']}_phantom.dcm"
                ds.save_as(target, enforce_file_format=True)
                written.append(target)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7, help="default 7: a seed the quickstart (seed 0) never trains on")
    parser.add_argument("--image-size", type=int, default=512, help="rows = columns (default 512, as clinical CT)")
    args = parser.parse_args(argv)
    for path in make_examples(args.seed, args.image_size):
        print(f"{path.relative_to(HERE.parent)}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
