"""Whole series and volumes: grouping, ordering and orientation of DICOM folders, zips and NIfTI files."""

import warnings
import zipfile

import nibabel as nib
import numpy as np
import pytest

from modeling import ct_volume, zip_archive
from modeling.ct_dicom import read_ct_hu, read_dicom
from modeling.ct_volume import read_ct_volumes
from training.dicom_writer import ct_dataset, write_ct_nifti, write_ct_series

SPACING = (2.5, 0.7, 0.8)  # slice, row, column (mm)
ORIGIN = (-10.0, 5.0, 100.0)  # LPS of display voxel (0, 0, 0)
# Display index (k, i, j) -> LPS mm: k steps up (z), i back (y), j to the patient's left (x).
DISPLAY_AFFINE = np.array([[0, 0, SPACING[2], ORIGIN[0]], [0, SPACING[1], 0, ORIGIN[1]],
                           [SPACING[0], 0, 0, ORIGIN[2]], [0, 0, 0, 1.0]])
PATIENT_ID = "DOE^JANE-4711"


def marked_volume(seed: int = 0) -> np.ndarray:
    """A display-order volume `(6, 20, 24)` in HU with a marker that differs under every flip:
    a block near the inferior, anterior, right corner and a bright voxel superior, posterior, left."""
    rng = np.random.default_rng(seed)
    hu = np.full((6, 20, 24), -1000.0) + rng.integers(0, 40, (6, 20, 24))
    hu[1:3, 2:6, 1:5] = 300.0
    hu[4, 16, 20] = 1500.0
    return hu


@pytest.fixture(scope="module")
def hu():
    return marked_volume()


@pytest.fixture(scope="module")
def pacs_folder(tmp_path_factory, hu):
    """One folder: the series with scrambled names and InstanceNumbers, a second series, a coronal
    localizer inside the first series, a localizer flagged by ImageType, an MR image and a text file."""
    folder = tmp_path_factory.mktemp("pacs")
    paths = write_ct_series(
        folder / "a", hu, SPACING, origin_mm=ORIGIN, scramble=7, patient_id=PATIENT_ID, series_uid="1.2.3.4.5.1"
    )
    second = marked_volume(1)[:3]
    write_ct_series(folder / "b", second, (5.0, 0.7, 0.8), patient_id=PATIENT_ID, series_uid="1.2.3.4.5.2")
    reference = ct_dataset(hu[0], patient_id=PATIENT_ID, series_uid="1.2.3.4.5.1")
    reference.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # coronal: a scout in the series
    reference.save_as(folder / "a" / "IM99999", enforce_file_format=True)
    scout = ct_dataset(hu[0], patient_id=PATIENT_ID)
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.save_as(folder / "scout.dcm", enforce_file_format=True)
    mr = ct_dataset(hu[1], patient_id=PATIENT_ID)
    mr.Modality = "MR"
    mr.save_as(folder / "mr.dcm", enforce_file_format=True)
    (folder / "notes.txt").write_text("not an image\n")
    assert sorted(paths) != paths  # names do not follow the anatomy
    return folder


def test_standard_axial_files_hold_the_display_orientation(tmp_path, hu):
    """Pins the convention independently of the reader: with ImageOrientationPatient (1,0,0,0,1,0) the
    stored pixels are the radiological display, and ImagePositionPatient z rises with the slice."""
    paths = write_ct_series(tmp_path, hu, SPACING, origin_mm=ORIGIN)
    assert np.array_equal(np.stack([read_ct_hu(p) for p in paths]), hu)
    assert [float(read_dicom(p).ImagePositionPatient[2]) for p in paths] == [100.0 + 2.5 * k for k in range(6)]


def test_pacs_folder_gives_one_volume_per_ct_series_in_anatomical_order(pacs_folder, hu):
    volumes = read_ct_volumes(pacs_folder)
    assert len(volumes) == 2
    first, second = volumes
    assert first.hu.dtype == np.float32 and first.hu.shape == (6, 20, 24)
    assert np.array_equal(first.hu, hu)
    assert first.spacing_mm == pytest.approx(SPACING)
    np.testing.assert_allclose(first.positions_mm, 100.0 + 2.5 * np.arange(6))
    assert second.hu.shape == (3, 20, 24) and second.spacing_mm[0] == pytest.approx(5.0)
    warnings = "\n".join(first.warnings)
    for name, reason in (
        ("a/IM99999", "orientation differs"),
        ("scout.dcm", "localizer"),
        ("mr.dcm", "modality is MR"),
        ("notes.txt", "not a DICOM file"),
    ):
        assert f"skipped {name}: " in warnings and reason in warnings
    assert dict(first.skipped)["a/IM99999"].startswith("orientation differs")
    # nothing identifying: not the UID, not the patient
    text = repr([(v.key, v.warnings, v.technical, v.slice_names) for v in volumes])
    assert "1.2.3.4.5" not in text and "DOE" not in text
    assert first.key != second.key and len(first.key) <= 12
    assert first.technical["pixel_spacing_mm"] == [0.7, 0.8] and first.technical["modality"] == "CT"


@pytest.mark.parametrize("row_axis,column_axis", [("R", "A"), ("P", "L"), ("L", "S"), ("S", "A"), ("A", "I")])
def test_any_stored_orientation_reads_back_as_the_display_volume(tmp_path, hu, row_axis, column_axis):
    write_ct_series(tmp_path, hu, SPACING, row_axis=row_axis, column_axis=column_axis, origin_mm=ORIGIN, scramble=1)
    [volume] = read_ct_volumes(tmp_path)
    assert np.array_equal(volume.hu, hu)  # the marker catches any L/R, A/P or S/I flip or axis swap
    assert volume.spacing_mm == pytest.approx(SPACING)
    np.testing.assert_allclose(volume.positions_mm, 100.0 + 2.5 * np.arange(6))
    np.testing.assert_allclose(volume.affine_lps, DISPLAY_AFFINE, atol=1e-6)  # where every voxel lies


def test_a_flipped_volume_is_told_apart(hu):
    """The marker is asymmetric: each flip changes the array, so equality above is a real check."""
    for axis in range(3):
        assert not np.array_equal(np.flip(hu, axis), hu)


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("L", "P", "I"), ("P", "I", "R")])
def test_nifti_in_any_orientation_equals_the_dicom_read(tmp_path, hu, axcodes):
    write_ct_series(tmp_path / "dicom", hu, SPACING, origin_mm=ORIGIN)
    [from_dicom] = read_ct_volumes(tmp_path / "dicom")
    path = write_ct_nifti(tmp_path / "volume.nii.gz", hu, SPACING, axcodes=axcodes, origin_mm=ORIGIN)
    assert nib.aff2axcodes(nib.load(path).affine) == tuple(axcodes)
    # nibabel's own canonical (RAS) array, turned to display order by hand: x runs right, y anterior
    canonical = np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)
    assert np.array_equal(canonical.transpose(2, 1, 0)[:, ::-1, ::-1], hu)
    [from_nifti] = read_ct_volumes(path)
    assert np.array_equal(from_nifti.hu, from_dicom.hu)
    assert from_nifti.spacing_mm == pytest.approx(from_dicom.spacing_mm)
    np.testing.assert_allclose(from_nifti.positions_mm, from_dicom.positions_mm, atol=1e-4)
    np.testing.assert_allclose(from_nifti.affine_lps, DISPLAY_AFFINE, atol=1e-4)
    np.testing.assert_allclose(from_dicom.affine_lps, DISPLAY_AFFINE, atol=1e-6)


def test_zip_of_the_folder_reads_the_same_and_leaves_nothing_behind(tmp_path, pacs_folder, hu, monkeypatch):
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(pacs_folder.rglob("*")):
            handle.write(path, path.relative_to(pacs_folder).as_posix())
    created = []
    real_temporary_directory = zip_archive.tempfile.TemporaryDirectory

    def recording_temporary_directory(*args, **kwargs):
        folder = real_temporary_directory(*args, **kwargs)
        created.append(folder.name)
        return folder

    monkeypatch.setattr(zip_archive.tempfile, "TemporaryDirectory", recording_temporary_directory)
    volumes = read_ct_volumes(archive)
    assert len(volumes) == 2 and np.array_equal(volumes[0].hu, hu)
    assert created and not any(ct_volume.os.path.exists(folder) for folder in created)


def test_zip_bomb_and_escaping_paths_are_refused_in_one_line(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("zeros.dcm", b"\0" * 5_000_000)  # 5 MB that compress to a few kB
    monkeypatch.setattr(zip_archive, "ZIP_MAX_BYTES", 1_000_000)
    with pytest.raises(ValueError, match=r"^the zip expands to more than .* GiB; refused$"):
        read_ct_volumes(bomb)
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as handle:
        for index in range(5):
            handle.writestr(f"f{index}", b"x")
    monkeypatch.setattr(zip_archive, "ZIP_MAX_MEMBERS", 4)
    with pytest.raises(ValueError, match="holds 5 files, more than the limit of 4"):
        read_ct_volumes(many)
    for name in ("../outside.dcm", "/etc/passwd", "a/../../outside.dcm"):
        escape = tmp_path / "escape.zip"
        with zipfile.ZipFile(escape, "w") as handle:
            handle.writestr(name, b"x")
        with pytest.raises(ValueError, match="escapes it"):
            read_ct_volumes(escape)
        assert not (tmp_path / "outside.dcm").exists()


def test_duplicate_positions_and_gaps_are_reported(tmp_path, hu):
    paths = write_ct_series(tmp_path / "s", hu, SPACING, origin_mm=ORIGIN)
    series_uid = str(read_dicom(paths[0]).SeriesInstanceUID)
    duplicate = ct_dataset(hu[2], series_uid=series_uid, instance_number=99)  # the lower InstanceNumber is kept
    duplicate.ImagePositionPatient = [-10.0, 5.0, 105.0]
    duplicate.PixelSpacing = [0.7, 0.8]
    duplicate.save_as(tmp_path / "s" / "zz_duplicate.dcm", enforce_file_format=True)
    (tmp_path / "s" / "slice_0004.dcm").unlink()  # a gap: 110 mm is missing
    [volume] = read_ct_volumes(tmp_path / "s")
    assert volume.hu.shape[0] == 5
    np.testing.assert_allclose(volume.positions_mm, [100.0, 102.5, 105.0, 107.5, 112.5])
    assert "skipped zz_duplicate.dcm: same position as slice_0002.dcm (duplicate slice)" in volume.warnings
    assert "uneven slice gaps from 2.50 to 5.00 mm (missing slices?)" in volume.warnings


def test_missing_source_and_no_ct_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="^no such file or folder"):
        read_ct_volumes(tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"^no CT series found \(1 file\(s\) skipped: notes.txt: not a DICOM file"):
        read_ct_volumes(tmp_path)


def test_a_file_with_a_damaged_tag_is_skipped_with_a_reason(tmp_path, hu):
    paths = write_ct_series(tmp_path, hu, SPACING, origin_mm=ORIGIN)
    data = open(paths[3], "rb").read()
    image_type = b"\x08\x00\x08\x00CS"  # (0008,0008) ImageType, explicit VR "CS"
    assert data.count(image_type) == 1
    open(paths[3], "wb").write(data.replace(image_type, b"\x08\x00\x08\x00CX"))  # an unknown VR
    [volume] = read_ct_volumes(tmp_path)
    assert volume.hu.shape[0] == 5
    assert dict(volume.skipped) == {"slice_0003.dcm": "malformed DICOM header tags (NotImplementedError)"}
    assert "uneven slice gaps from 2.50 to 5.00 mm (missing slices?)" in volume.warnings


def test_a_nifti_key_hashes_the_volume_in_place():
    """The key of a NIfTI volume (no UID to hash) is its voxels' digest: taken without a copy of them."""
    import tracemalloc

    from modeling.ct_volume import nifti_key_digest

    hu = np.random.default_rng(0).normal(size=(40, 256, 256)).astype(np.float32)  # 10 MB
    tracemalloc.start()
    key = nifti_key_digest(hu, (2.5, 0.8, 0.8))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < hu.nbytes / 100, f"{peak} bytes allocated to hash a {hu.nbytes}-byte volume"
    assert key == nifti_key_digest(hu.copy(), (2.5, 0.8, 0.8)) != nifti_key_digest(hu, (2.5, 0.8, 0.7))


def test_series_and_slice_readers_refuse_a_header_by_the_same_rule(tmp_path, hu):
    """"Is this a CT slice" is one rule: a file the series reader sets aside for its header is refused by
    `read_ct_hu` (the processor, the pipeline, the demo) with the same one-line reason, and no tag value
    outside DICOM's defined terms is echoed by either."""
    cases = {"scout.dcm": ("ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]), "mr.dcm": ("Modality", "MR"),
             "named.dcm": ("Modality", "OT^DOE^JANE"), "frames.dcm": ("NumberOfFrames", 2)}
    for name, (keyword, value) in cases.items():
        ds = ct_dataset(hu[0], patient_id=PATIENT_ID)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom quotes the invalid "OT^DOE^JANE" when it is set
            setattr(ds, keyword, value)
        if keyword == "NumberOfFrames":
            ds.PixelData = ds.PixelData * 2
        ds.save_as(tmp_path / name, enforce_file_format=True)
    _, skipped = ct_volume.group_dicom_series([str(tmp_path / name) for name in cases], list(cases))
    reasons = dict(skipped)
    assert set(reasons) == set(cases)
    for name in cases:
        with pytest.raises(ValueError) as refused:
            read_ct_hu(tmp_path / name)
        assert str(refused.value) == reasons[name], name
    assert reasons["scout.dcm"] == "localizer (scout) image"
    assert reasons["named.dcm"] == "modality is an unlisted value, not CT"
