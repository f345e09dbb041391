"""The demo's committed examples are what `training.make_examples` draws today, and stay synthetic."""

from pathlib import Path

import numpy as np
import pydicom

from modeling.ct_dicom import read_ct_hu
from training.make_examples import EXAMPLES_DIR, make_examples


def test_examples_live_in_the_space_folder():
    assert EXAMPLES_DIR == Path(__file__).resolve().parents[1] / "space" / "examples"


def test_committed_examples_are_todays_phantom(tmp_path):
    # Stale examples (an older phantom) would show a trained model's mistakes on the demo's first click.
    fresh_slices = make_examples(out_dir=tmp_path)
    assert {path.name for path in fresh_slices} == {"metastatic_phantom.dcm", "non_metastatic_phantom.dcm"}
    for fresh in fresh_slices:
        committed = EXAMPLES_DIR / fresh.name
        assert np.array_equal(read_ct_hu(fresh), read_ct_hu(committed)), fresh.name
        assert pydicom.dcmread(committed).PatientID.startswith("PHANTOM-")
