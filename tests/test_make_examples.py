"""The demo's committed examples are what `training.make_examples` draws today, small and synthetic."""

import zipfile
from pathlib import Path

import numpy as np
import pydicom

from modeling.ct_dicom import read_ct_hu
from modeling.ct_volume import read_ct_volumes
from training.make_examples import EXAMPLES_DIR, SERIES_EXAMPLE, SERIES_SLICES, make_examples


def test_examples_live_in_the_space_folder():
    assert EXAMPLES_DIR == Path(__file__).resolve().parents[1] / "space" / "examples"


def test_committed_examples_are_todays_phantom(tmp_path):
    # Stale examples (an older phantom) would show a trained model's mistakes on the demo's first click.
    # Compared as HU, not bytes: another JPEG 2000 encoder version may encode the same pixels differently.
    fresh = make_examples(out_dir=tmp_path)
    assert {path.name for path in fresh} == {"metastatic_phantom.dcm", "non_metastatic_phantom.dcm", SERIES_EXAMPLE}
    for path in fresh:
        committed = EXAMPLES_DIR / path.name
        if path.suffix == ".zip":
            (fresh_volume,), (committed_volume,) = read_ct_volumes(path), read_ct_volumes(committed)
            assert np.array_equal(fresh_volume.hu, committed_volume.hu), "rerun python -m training.make_examples"
            assert fresh_volume.spacing_mm == committed_volume.spacing_mm
        else:
            assert np.array_equal(read_ct_hu(path), read_ct_hu(committed)), "rerun python -m training.make_examples"
            assert pydicom.dcmread(committed).PatientID.startswith("PHANTOM-")


def test_series_example_is_one_small_synthetic_series():
    series_zip = EXAMPLES_DIR / SERIES_EXAMPLE
    assert series_zip.stat().st_size < 1024**2  # the Space repository stays light
    (volume,) = read_ct_volumes(series_zip)
    assert volume.hu.shape[0] == SERIES_SLICES and not volume.warnings
    with zipfile.ZipFile(series_zip) as archive:
        for name in archive.namelist():
            with archive.open(name) as member:
                assert pydicom.dcmread(member, stop_before_pixels=True).PatientID.startswith("PHANTOM-")
