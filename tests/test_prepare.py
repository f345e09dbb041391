"""training.prepare: folder trees and manifests -> patient-grouped, stratified splits; bad files reported."""

import csv
import json
import shutil

import datasets
import numpy as np
import pydicom
import pytest
from PIL import Image

from modeling import CTImageProcessor
from training.dicom_writer import ct_dataset
from training.prepare import (
    CLASS_NAMES,
    Record,
    Slice,
    _array2d,
    features,
    main,
    mask_at_size,
    parse_slices,
    prepare_dataset,
    split_columns,
    split_dataset,
    split_patients,
)

SIZE = 64


def manifest_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_manifest(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def patients_by_split(dataset_dict):
    return {name: set(split["patient_id"]) for name, split in dataset_dict.items()}


def test_manifest_gives_a_loadable_patient_grouped_dataset(prepared_dataset, phantom_dir):
    dataset_dict = datasets.load_from_disk(str(prepared_dataset))
    assert set(dataset_dict) == {"train", "validation", "test"}
    train = dataset_dict["train"]
    assert train.features["label"].names == CLASS_NAMES
    assert set(train.column_names) == {"image", "label", "patient_id", "source", "mask", "has_mask"}
    assert np.asarray(train[0]["image"]).shape == (SIZE, SIZE)
    patients = patients_by_split(dataset_dict)
    assert not (patients["train"] & patients["validation"] or patients["train"] & patients["test"]
                or patients["validation"] & patients["test"])
    manifest = {row["path"]: row for row in manifest_rows(phantom_dir / "manifest.csv")}
    for split in dataset_dict.values():
        for source, patient_id, label in zip(split["source"], split["patient_id"], split["label"], strict=True):
            assert manifest[source]["patient_id"] == patient_id  # the manifest's pseudonym is kept
            assert CLASS_NAMES[label] == manifest[source]["label"]
    assert sum(len(split) for split in dataset_dict.values()) == len(manifest)


def test_info_records_window_size_seed_and_train_statistics(prepared_dataset):
    info = json.loads((prepared_dataset / "prepare_info.json").read_text())
    train_images = np.asarray(datasets.load_from_disk(str(prepared_dataset))["train"].with_format("numpy")["image"])
    assert (info["window_center"], info["window_width"], info["size"], info["seed"]) == (60.0, 400.0, SIZE, 0)
    assert info["image_mean"] == pytest.approx([train_images.mean()] * 3, rel=1e-5)
    assert info["image_std"] == pytest.approx([train_images.std()] * 3, rel=1e-5)
    assert sum(c["slices"] for c in info["counts"].values()) == 24 and info["n_bad_files"] == 0
    assert (prepared_dataset / "bad_files.csv").read_text().strip() == "path,reason"


def test_stored_slices_and_masks_equal_the_processors_output(prepared_dataset, phantom_dir):
    split = datasets.load_from_disk(str(prepared_dataset))["test"].with_format("numpy")
    processor = CTImageProcessor(size=SIZE, do_normalize=False)
    mask_of = {row["path"]: row["mask_path"] for row in manifest_rows(phantom_dir / "manifest.csv")}
    for row in split.select(range(2)):
        expected = processor(str(phantom_dir / row["source"]))["pixel_values"][0, 0].numpy()
        np.testing.assert_allclose(row["image"], expected, atol=1e-6)
        native = np.asarray(Image.open(phantom_dir / mask_of[row["source"]])) > 0
        assert row["has_mask"] and split.features["mask"].dtype == "uint8"
        # the stored mask is the native one at model size: same area (in pixels, rescaled) within 35 %
        assert row["mask"].sum() == pytest.approx(native.sum() * (SIZE / native.shape[0]) ** 2, rel=0.35)
        assert row["image"][row["mask"] > 0].mean() > row["image"].mean() * 0.8  # on the node, not in air


def _tree_with_bad_files(phantom_dir, root):
    """The phantom as cancer/normal folders (the paper's names) plus one file of each bad kind."""
    for row in manifest_rows(phantom_dir / "manifest.csv"):
        target = root / ("cancer" if row["label"] == "metastatic" else "normal") / row["path"].split("/")[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(phantom_dir / row["path"], target)
    bad = {
        "normal/notes.txt": "not a DICOM file",
        "normal/empty.dcm": "empty file",
        "cancer/truncated.dcm": "truncated or corrupt",
        "cancer/mr.dcm": "modality is MR, not CT",
    }
    (root / "normal/notes.txt").write_text("not an image")
    (root / "normal/empty.dcm").write_bytes(b"")
    good = root / "cancer" / sorted(p.name for p in (root / "cancer").iterdir())[0]
    (root / "cancer/truncated.dcm").write_bytes(good.read_bytes()[:2000])
    mr = ct_dataset(np.zeros((8, 8)), patient_id="PHANTOM-MR")
    mr.Modality = "MR"
    mr.save_as(root / "cancer/mr.dcm", enforce_file_format=True)
    return bad


def test_folder_tree_reports_bad_files_by_name_and_keeps_the_good_ones(phantom_dir, tmp_path, capsys):
    bad = _tree_with_bad_files(phantom_dir, tmp_path / "tree")
    dataset_dict = prepare_dataset(tmp_path / "tree", tmp_path / "ds", size=32, num_workers=2)
    screen = capsys.readouterr().out
    listed = {row["path"]: row["reason"] for row in manifest_rows(tmp_path / "ds" / "bad_files.csv")}
    assert set(listed) == set(bad)
    for path, reason in bad.items():
        assert reason in listed[path]
        assert f"bad file {path}: {listed[path]}" in screen
    assert sum(len(split) for split in dataset_dict.values()) == 24
    # IDs read from DICOM are stored as salted hashes, and grouping still holds
    patients = patients_by_split(dataset_dict)
    every_id = set().union(*patients.values())
    assert len(every_id) == 12 and all(p.startswith("P-") and "PHANTOM" not in p for p in every_id)
    assert sum(len(ids) for ids in patients.values()) == 12
    assert json.loads((tmp_path / "ds" / "prepare_info.json").read_text())["n_bad_files"] == 4


def test_missing_manifest_file_is_reported_and_mixed_class_patient_noted(phantom_dir, tmp_path, capsys):
    rows = manifest_rows(phantom_dir / "manifest.csv")
    for row in rows:
        for key in ("path", "mask_path"):
            row[key] = str(phantom_dir / row[key])
    mixed = next(row for row in rows if row["label"] == "non_metastatic")
    mixed["patient_id"] = rows[0]["patient_id"]  # a metastatic patient now also has a normal slice
    rows.append({"path": "gone/missing.dcm", "label": "metastatic", "patient_id": "X", "mask_path": ""})
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    dataset_dict = prepare_dataset(manifest, tmp_path / "ds", size=32, num_workers=1)
    screen = capsys.readouterr().out
    assert "bad file gone/missing.dcm: listed in the manifest but missing" in screen
    assert f"patient {rows[0]['patient_id']} has slices in both classes (2 metastatic, 1 non-metastatic)" in screen
    split_of = {name for name, split in dataset_dict.items() if rows[0]["patient_id"] in split["patient_id"]}
    assert len(split_of) == 1
    assert sum(len(split) for split in dataset_dict.values()) == 24


def test_too_few_patients_or_nothing_usable_fails_with_a_reason(phantom_dir, tmp_path):
    rows = [row for row in manifest_rows(phantom_dir / "manifest.csv")][:8]  # 4 patients
    for row in rows:
        row["path"] = str(phantom_dir / row["path"])
        row["mask_path"] = ""
    with pytest.raises(ValueError, match="4 patient.*at least 6 are needed"):
        prepare_dataset(write_manifest(tmp_path / "few.csv", rows), tmp_path / "ds1", size=32, num_workers=1)
    (tmp_path / "junk" / "metastatic").mkdir(parents=True)
    (tmp_path / "junk" / "metastatic" / "a.dcm").write_text("junk")
    with pytest.raises(ValueError, match="no usable slice"):
        prepare_dataset(tmp_path / "junk", tmp_path / "ds2", size=32, num_workers=1)


def test_cli_exits_with_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nowhere"), "--output", str(tmp_path / "ds")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: input {tmp_path / 'nowhere'} does not exist"


def test_splits_are_stratified_grouped_and_four_one_one():
    rng = np.random.default_rng(0)
    slices = []
    for patient in range(60):
        label = int(patient % 10 < 3)  # 30 % metastatic patients
        for _ in range(int(rng.integers(1, 5))):
            slices.append(Slice(Record("x", "x", label), None, None, False, f"p{patient}"))
    splits = split_patients(slices, seed=0)
    overall = np.mean([s.record.label for s in slices])
    for name, expected_share in (("train", 4 / 6), ("validation", 1 / 6), ("test", 1 / 6)):
        members = splits[name]
        assert abs(len({s.group_key for s in members}) / 60 - expected_share) < 0.05
        assert abs(np.mean([s.record.label for s in members]) - overall) < 0.1
    assert split_patients(slices, seed=0)["test"] == splits["test"]  # seeded


def test_split_dataset_builds_the_table_datasets_from_dict_builds():
    """`split_dataset` lays out the Arrow table itself (Array2D's storage, a random fingerprint) instead of
    calling `Dataset.from_dict`, for speed and memory: if `datasets` changes that layout, this fails."""
    rng = np.random.default_rng(0)
    members = [Slice(Record(f"s{i}.dcm", f"/in/s{i}.dcm", i % 2), rng.random((5, 5), dtype=np.float32),
                     (rng.random((5, 5)) > 0.5).astype(np.uint8), bool(i % 3), f"manifest:p{i}") for i in range(7)]
    images = np.stack([s.image for s in members])
    ours = split_dataset(members, images, salt="s")
    reference = datasets.Dataset.from_dict(split_columns(members, images, "s"), features=features(5))
    assert ours.features == reference.features == features(5)
    assert ours.data.table.equals(reference.data.table)
    assert ours[3]["patient_id"] == "p3" and np.array_equal(ours.with_format("numpy")[4]["image"], images[4])
    assert ours._fingerprint != split_dataset(members, images, salt="s")._fingerprint  # random, never hashed
    several_chunks = _array2d(images, features(5).arrow_schema.field("image").type, chunk=3)
    assert several_chunks.num_chunks == 3 and several_chunks.equals(reference.data.table.column("image"))


def test_png_dir_round_trips_through_prepare(phantom_dir, tmp_path):
    png_dir = tmp_path / "png"
    first = prepare_dataset(phantom_dir / "manifest.csv", tmp_path / "ds1", png_dir=png_dir, size=32, num_workers=1)
    rows = manifest_rows(png_dir / "manifest.csv")
    assert len(rows) == 24 and all((png_dir / row["path"]).is_file() for row in rows)
    with Image.open(png_dir / rows[0]["path"]) as png:
        assert png.size == (96, 96) and png.mode.startswith("I")
    again = prepare_dataset(png_dir / "manifest.csv", tmp_path / "ds2", size=32, num_workers=1)
    for name in first:
        assert patients_by_split(first)[name] == patients_by_split(again)[name]  # same patients, same seed
        np.testing.assert_allclose(np.asarray(first[name].with_format("numpy")["image"]),
                                   np.asarray(again[name].with_format("numpy")["image"]), atol=1e-4)


def test_mask_resized_around_the_lesion_equals_a_full_resize():
    rng = np.random.default_rng(0)
    for _ in range(50):
        rows, columns, size = (int(n) for n in rng.integers(40, 520, 3))
        native = np.zeros((rows, columns), np.uint8)
        top, left = rng.integers(0, rows), rng.integers(0, columns)
        native[top:top + rng.integers(1, 40), left:left + rng.integers(1, 40)] = 255
        full = np.asarray(Image.fromarray(native).resize((size, size), Image.Resampling.BILINEAR))
        ours = mask_at_size(Image.fromarray(native), size)
        differs = ours != (full >= 128)
        assert np.all(np.abs(full[differs].astype(int) - 128) <= 1)  # only ties at the threshold may differ
        assert ours.sum() > 0 or full.max() < 128
    assert not mask_at_size(Image.new("L", (64, 48)), 32).any()


@pytest.fixture(scope="module")
def phantom_volumes(tmp_path_factory):
    """6 phantom patients per class as volumes (DICOM series + NIfTI + NIfTI node masks), 64 px, 8-10 sections."""
    from training.phantom import generate_phantom_volumes

    path = tmp_path_factory.mktemp("volumes")
    generate_phantom_volumes(path, n_per_class=6, seed=1, image_size=64, n_slices=(8, 10), progress=False,
                             num_workers=1)
    return path


def test_phantom_volumes_prepare_into_patient_grouped_slices_with_their_own_masks(phantom_volumes, tmp_path):
    from modeling.ct_volume import read_ct_volumes

    dataset_dict = prepare_dataset(phantom_volumes / "manifest.csv", tmp_path / "ds", size=SIZE, num_workers=2)
    rows = {row["path"]: row for row in manifest_rows(phantom_volumes / "manifest.csv")}
    patients = patients_by_split(dataset_dict)
    assert not (patients["train"] & patients["validation"] or patients["train"] & patients["test"]
                or patients["validation"] & patients["test"])
    stored = {}
    for split in dataset_dict.values():
        for item in split.with_format("numpy"):
            path, index = item["source"][:-1].split("[")
            assert rows[path]["patient_id"] == item["patient_id"] and item["has_mask"]
            stored[(path, int(index))] = item
    expected = set()
    for path, row in rows.items():
        (volume,) = read_ct_volumes(phantom_volumes / path)
        (mask,) = read_ct_volumes(phantom_volumes / row["mask_path"])
        for k in np.flatnonzero((mask.hu > 0.5).any(axis=(1, 2))):
            expected.add((path, int(k)))
            item = stored[(path, int(k))]
            processor = CTImageProcessor(size=SIZE, do_normalize=False)
            np.testing.assert_allclose(item["image"], processor(volume.hu[k])["pixel_values"][0, 0].numpy(), atol=1e-6)
            np.testing.assert_array_equal(item["mask"], mask.hu[k] > 0.5)  # native 64 px: its own slice's mask
            assert CLASS_NAMES[item["label"]] == row["label"]
    assert set(stored) == expected


def test_volume_rows_by_slices_nifti_and_zip_and_bad_volume_rows_listed(phantom_volumes, tmp_path):
    rows = [dict(row) for row in manifest_rows(phantom_volumes / "manifest.csv")]
    for row in rows:
        row.update(path=str(phantom_volumes / row["path"]), mask_path=str(phantom_volumes / row["mask_path"]),
                   slices="")
    first, second = rows[0]["patient_id"], rows[1]["patient_id"]
    rows[0].update(path=str(phantom_volumes / "nifti" / f"{first}.nii.gz"), mask_path="", slices="2-4")
    zipped = shutil.make_archive(str(tmp_path / "series"), "zip", phantom_volumes / "series" / second)
    rows[1].update(path=zipped, slices="0,5")  # the mask stays: slices 0 and 5 with their own masks
    two_series = tmp_path / "two"
    shutil.copytree(phantom_volumes / "series" / first, two_series / "a")
    shutil.copytree(phantom_volumes / "series" / second, two_series / "b")
    bad = [
        {"path": str(phantom_volumes / "series" / first), "label": "metastatic", "patient_id": "X1"},
        {"path": str(phantom_volumes / "series" / first), "label": "metastatic", "patient_id": "X2", "slices": "3-99"},
        {"path": str(phantom_volumes / "series" / first), "label": "metastatic", "patient_id": "X3",
         "mask_path": str(phantom_volumes / "masks" / f"{rows[-1]['patient_id']}.nii.gz")},
        {"path": str(two_series), "label": "metastatic", "patient_id": "X4", "slices": "1"},
        {"path": str(tmp_path / "series.zip"), "label": "metastatic", "patient_id": "X5", "slices": "one"},
    ]
    columns = ("path", "label", "patient_id", "mask_path", "slices")
    manifest = write_manifest(tmp_path / "manifest.csv", [{key: r.get(key, "") for key in columns} for r in rows + bad])
    dataset_dict = prepare_dataset(manifest, tmp_path / "ds", size=32, num_workers=1)
    items = {item["source"]: item for split in dataset_dict.values() for item in split}
    nifti_items = [item for source, item in items.items() if source.startswith(rows[0]["path"])]
    assert sorted(source[-3:] for source in items if source.startswith(rows[0]["path"])) == ["[2]", "[3]", "[4]"]
    assert not any(item["has_mask"] for item in nifti_items)
    assert sorted(source[-3:] for source in items if source.startswith(zipped)) == ["[0]", "[5]"]
    assert all(items[f"{zipped}[{k}]"]["has_mask"] for k in (0, 5))
    bad_paths = {r["path"] for r in bad}
    listed = [row for row in manifest_rows(tmp_path / "ds" / "bad_files.csv") if row["path"] in bad_paths]
    reasons = dict(zip([r["patient_id"] for r in bad], [row["reason"] for row in listed], strict=True))
    assert reasons["X1"].startswith("a volume row needs a mask_path")
    assert reasons["X2"].startswith("slices '3-99': out of range, the volume has")
    assert reasons["X3"].startswith("the mask's grid")
    assert reasons["X4"] == "2 CT series in it; give each series (its own folder) its own row"
    assert reasons["X5"] == "slices 'one': expected indices such as 12-18 or 12,14,15"


def test_pixel_spacing_mm_prepares_at_that_spacing_and_the_trained_processor_keeps_it(phantom_dir, tmp_path):
    from training.data import load_prepared, processor_from_info

    prepare_dataset(phantom_dir / "manifest.csv", tmp_path / "ds", size=SIZE, num_workers=1, pixel_spacing_mm=4.0)
    dataset_dict, info = load_prepared(tmp_path / "ds")
    assert info["pixel_spacing_mm"] == 4.0
    processor = CTImageProcessor(size=SIZE, do_normalize=False, pixel_spacing_mm=4.0)
    masks = {row["path"]: row["mask_path"] for row in manifest_rows(phantom_dir / "manifest.csv")}
    for item in dataset_dict["train"].with_format("numpy").select(range(3)):
        expected = processor(str(phantom_dir / item["source"]))["pixel_values"][0, 0].numpy()
        np.testing.assert_allclose(item["image"], expected, atol=1e-6)
        native = np.asarray(Image.open(phantom_dir / masks[item["source"]])) > 0
        spacing = float(pydicom.dcmread(phantom_dir / item["source"]).PixelSpacing[0])
        assert item["mask"].sum() == pytest.approx(native.sum() * (spacing / 4.0) ** 2, rel=0.35)  # same mm^2
    assert processor_from_info(info).pixel_spacing_mm == 4.0
    assert processor_from_info(info, image_size=2 * SIZE).pixel_spacing_mm == 2.0  # same field of view in mm
    assert json.loads((tmp_path / "ds" / "prepare_info.json").read_text())["pixel_spacing_mm"] == 4.0


def test_slices_column_reads_ranges_and_lists_in_volume_order():
    assert parse_slices("12-14", 20) == [12, 13, 14]
    assert parse_slices("12,14,15", 20) == [12, 14, 15]
    assert parse_slices(" 3-5, 9,4 ", 10) == [3, 4, 5, 9]
    for text, message in (("5-3", "5-3 runs backwards"), ("20", "out of range"), ("1-", "expected indices"),
                          ("a,b", "expected indices"), ("-2", "expected indices")):
        with pytest.raises(ValueError, match=message):
            parse_slices(text, 20)


def test_two_dicom_series_of_one_patient_without_patient_id_stay_in_one_split(phantom_volumes, tmp_path):
    from modeling.ct_volume import read_ct_volumes
    from training.dicom_writer import write_ct_series

    rows = manifest_rows(phantom_volumes / "manifest.csv")
    first = rows[0]["patient_id"]
    (volume,) = read_ct_volumes(phantom_volumes / rows[0]["path"])
    # more series of the first patient (new series UIDs, as a second phase would have), one row each
    extra = []
    for n in range(3):
        folder = tmp_path / f"phase{n}"
        write_ct_series(folder, volume.hu + 10 * n, volume.spacing_mm, patient_id=first)
        path = shutil.make_archive(str(folder), "zip", folder) if n == 2 else str(folder)  # a zip too
        extra.append({**rows[0], "path": path, "mask_path": str(phantom_volumes / rows[0]["mask_path"])})
    nifti = {**rows[0], "path": str(phantom_volumes / "nifti" / f"{first}.nii.gz"), "mask_path": "", "slices": "1"}
    rows = [{**row, "path": str(phantom_volumes / row["path"]),
             "mask_path": str(phantom_volumes / row["mask_path"]), "slices": ""} for row in rows] + extra + [nifti]
    for row in rows:
        del row["patient_id"]  # grouping must come from the series' DICOM PatientID
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    dataset_dict = prepare_dataset(manifest, tmp_path / "ds", size=32, num_workers=1, id_salt="s")
    series_of_first = {rows[0]["path"]} | {row["path"] for row in extra}
    ids, splits = set(), set()
    for name, split in dataset_dict.items():
        for source, patient_id in zip(split["source"], split["patient_id"], strict=True):
            if source.split("[")[0] in series_of_first:
                ids.add(patient_id)
                splits.add(name)
    assert len(splits) == 1  # the patient's four series lie in one split
    assert len(ids) == 1 and ids.pop().startswith("P-")  # one patient, its PatientID stored only as a hash
    patients = patients_by_split(dataset_dict)
    assert not any(first in p for p in set().union(*patients.values()))
    # 12 patients, not one per row (16), and the NIfTI (no patient tag) its own patient
    assert sum(len(p) for p in patients.values()) == 13


def _shifted_mask(source, target, shift_mm):
    """The NIfTI mask `source` with its origin moved `shift_mm` along the patient's z (superior)."""
    import nibabel as nib

    image = nib.load(source)
    affine = image.affine.copy()
    affine[2, 3] += shift_mm  # RAS z is LPS z: superior either way
    moved = nib.Nifti1Image(np.asarray(image.dataobj), affine)
    moved.set_qform(affine, code=1)
    moved.set_sform(affine, code=1)
    nib.save(moved, target)
    return str(target)


def test_volume_mask_on_another_z_range_is_refused_and_the_rest_kept(phantom_volumes, tmp_path):
    from training.phantom import SLICE_THICKNESS_MM

    rows = [{**row, "path": str(phantom_volumes / row["path"]), "mask_path": str(phantom_volumes / row["mask_path"])}
            for row in manifest_rows(phantom_volumes / "manifest.csv")]
    mask = rows[0]["mask_path"]
    near = {**rows[0], "patient_id": "NEAR",  # a fraction of a slice off: each mask slice still meets its own
            "mask_path": _shifted_mask(mask, tmp_path / "near.nii.gz", 0.2 * SLICE_THICKNESS_MM)}
    shifted = {**rows[0], "patient_id": "SHIFTED",
               "mask_path": _shifted_mask(mask, tmp_path / "shifted.nii.gz", 3 * SLICE_THICKNESS_MM)}
    manifest = write_manifest(tmp_path / "manifest.csv", rows + [near, shifted])
    dataset_dict = prepare_dataset(manifest, tmp_path / "ds", size=32, num_workers=1)
    listed = manifest_rows(tmp_path / "ds" / "bad_files.csv")
    assert len(listed) == 1 and listed[0]["path"] == shifted["path"]
    reason = listed[0]["reason"]
    assert reason.startswith("the mask's slices lie at z 15 to") and "volume's at 0 to" in reason
    assert "\n" not in reason
    patients = set().union(*patients_by_split(dataset_dict).values())
    assert "SHIFTED" not in patients and "NEAR" in patients and set(r["patient_id"] for r in rows) <= patients
    kept = [s for split in dataset_dict.values() for s in split["source"] if s.startswith(rows[0]["path"] + "[")]
    assert len(kept) == 2 * len(set(kept))  # the same volume with its own mask and the near one: the same slices
