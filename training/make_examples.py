"""Regenerate the demo's example slices (space/examples/): one metastatic and one non-metastatic phantom slice.

    python -m training.make_examples [--seed 7] [--image-size 512] [--out-dir space/examples]

It lives in `training/` because it draws on `training.phantom`; the Space itself needs only `modeling/`.
The slices are written JPEG 2000 lossless so the examples stay well under 1 MB together.
"""

import argparse
import csv
import tempfile
from pathlib import Path

import pydicom
from pydicom.uid import JPEG2000Lossless

from training.phantom import generate_phantom

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "space" / "examples"


def make_examples(seed: int = 7, image_size: int = 512, out_dir: Path = EXAMPLES_DIR) -> list:
    """Write `out_dir/{metastatic,non_metastatic}_phantom.dcm`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate_phantom(tmp, n_per_class=1, seed=seed, image_size=image_size, slices_per_patient=1,
                                    progress=False, num_workers=1)
        with open(manifest, newline="") as handle:
            for row in csv.DictReader(handle):
                ds = pydicom.dcmread(Path(tmp) / row["path"])
                ds.compress(JPEG2000Lossless)
                target = out_dir / f"{row['label']}_phantom.dcm"
                ds.save_as(target, enforce_file_format=True)
                written.append(target)
    return written


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7, help="default 7: a seed the quickstart (seed 0) never trains on")
    parser.add_argument("--image-size", type=int, default=512, help="rows = columns (default 512, as clinical CT)")
    parser.add_argument("--out-dir", type=Path, default=EXAMPLES_DIR, help="default: space/examples")
    args = parser.parse_args(argv)
    written = make_examples(args.seed, args.image_size, args.out_dir)
    for path in written:
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")
    return written


if __name__ == "__main__":
    main()
