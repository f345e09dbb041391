"""training.prepare: folder trees and manifests -> patient-grouped, stratified splits; bad files reported."""

import csv
import json
import shutil

import datasets
import numpy as np
import pytest
from PIL import Image

from modeling import CTImageProcessor
from training.dicom_writer import ct_dataset
from training.prepare import CLASS_NAMES, Record, Slice, main, mask_at_size, prepare_dataset, split_patients

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
