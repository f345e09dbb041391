"""Regenerate the demo's examples (space/examples/): one metastatic and one non-metastatic phantom slice,
and a metastatic phantom series as a zip of its DICOM slices.

    python -m training.make_examples [--seed 7] [--image-size 512] [--out-dir space/examples]

It lives in `training/` because it draws on `training.phantom`; the Space itself needs only `modeling/`.
Slices are written JPEG 2000 lossless, the series at 256 px, so that all examples stay under 1 MB.
"""

import argparse
import csv
import tempfile
import zipfile
from pathlib import Path

import pydicom
from pydicom.uid import JPEG2000Lossless

from training.phantom import generate_phantom, generate_phantom_volumes

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "space" / "examples"
SERIES_EXAMPLE = "metastatic_series_phantom.zip"
SERIES_IMAGE_SIZE = 256  # a whole series at 512 px would not stay small
SERIES_SLICES = 8


def make_examples(seed: int = 7, image_size: int = 512, out_dir: Path = EXAMPLES_DIR) -> list:
    """Write `out_dir/{metastatic,non_metastatic}_phantom.dcm` and the series zip; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate_phantom(tmp, n_per_class=1, seed=seed, image_size=image_size, slices_per_patient=1,
                                    progress=False, num_workers=1)
        with open(manifest, newline="") as handle:
            for row in csv.DictReader(handle):
                target = out_dir / f"{row['label']}_phantom.dcm"
                _compressed(Path(tmp) / row["path"]).save_as(target, enforce_file_format=True)
                written.append(target)
    written.append(make_series_example(seed, out_dir / SERIES_EXAMPLE))
    return written


def make_series_example(seed: int, target: Path) -> Path:
    """A metastatic phantom patient's series (`SERIES_SLICES` sections) as a zip of compressed DICOM files."""
    with tempfile.TemporaryDirectory() as tmp:
        manifest = generate_phantom_volumes(tmp, n_per_class=1, seed=seed, image_size=SERIES_IMAGE_SIZE,
                                            n_slices=(SERIES_SLICES, SERIES_SLICES), progress=False, num_workers=1)
        with open(manifest, newline="") as handle:
            series = next(Path(tmp) / row["path"] for row in csv.DictReader(handle) if row["label"] == "metastatic")
        with zipfile.ZipFile(target, "w") as archive:
            for path in sorted(series.iterdir()):
                _compressed(path).save_as(Path(tmp) / "slice.dcm", enforce_file_format=True)
                # a fixed timestamp, so that the same seed gives the same zip, byte for byte
                member = zipfile.ZipInfo(f"{series.name}/{path.name}", date_time=(1980, 1, 1, 0, 0, 0))
                archive.writestr(member, (Path(tmp) / "slice.dcm").read_bytes())
    return target


def _compressed(path: Path) -> pydicom.Dataset:
    """The DICOM at `path`, JPEG 2000 lossless; it keeps its (deterministic) SOP Instance UID."""
    ds = pydicom.dcmread(path)
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    return ds


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7, help="default 7: a seed the quickstart (seed 0) never trains on")
    parser.add_argument("--image-size", type=int, default=512, help="slice rows = columns (default 512)")
    parser.add_argument("--out-dir", type=Path, default=EXAMPLES_DIR, help="default: space/examples")
    args = parser.parse_args(argv)
    written = make_examples(args.seed, args.image_size, args.out_dir)
    for path in written:
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")
    return written


if __name__ == "__main__":
    main()
