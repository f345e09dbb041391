"""The CT phantom: real CT DICOMs, plausible HU, masks on the node, deterministic, class not in mean intensity."""

import csv
import hashlib

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from modeling.ct_dicom import read_ct_hu, read_dicom
from training.phantom import FIELD_OF_VIEW_MM, generate_phantom, generate_phantom_volumes, main


def manifest_rows(folder):
    with open(folder / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def file_digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_manifest_lists_every_slice_with_class_folders_and_patients(phantom_dir):
    rows = manifest_rows(phantom_dir)
    assert len(rows) == 24
    assert {row["label"] for row in rows} == {"metastatic", "non_metastatic"}
    for row in rows:
        assert row["path"].startswith(row["label"] + "/") and row["path"].endswith(".dcm")
        assert (phantom_dir / row["path"]).is_file() and (phantom_dir / row["mask_path"]).is_file()
    labels_of_patient = {}
    for row in rows:
        labels_of_patient.setdefault(row["patient_id"], set()).add(row["label"])
    assert len(labels_of_patient) == 12  # 2 slices per patient
    assert all(len(labels) == 1 for labels in labels_of_patient.values())


def test_slices_are_ct_dicoms_with_the_patients_pseudonym(phantom_dir):
    row = manifest_rows(phantom_dir)[0]
    ds = read_dicom(phantom_dir / row["path"])
    assert ds.Modality == "CT"
    assert ds.PatientID == row["patient_id"] and ds.PatientID.startswith("PHANTOM-")
    assert (ds.Rows, ds.Columns) == (96, 96)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    assert row_spacing == column_spacing and FIELD_OF_VIEW_MM[0] / 96 <= row_spacing <= FIELD_OF_VIEW_MM[1] / 96
    assert float(ds.RescaleIntercept) == -1024.0
    other = read_dicom(phantom_dir / manifest_rows(phantom_dir)[1]["path"])
    assert other.StudyInstanceUID == ds.StudyInstanceUID and other.SOPInstanceUID != ds.SOPInstanceUID


def test_hounsfield_values_are_plausible(tmp_path):
    generate_phantom(tmp_path, n_per_class=1, seed=3, image_size=192, progress=False)
    row = manifest_rows(tmp_path)[0]
    hu = read_ct_hu(tmp_path / row["path"])
    assert hu[:8, :8].mean() == pytest.approx(-1000, abs=30)  # air outside the body
    assert hu.max() > 400  # bone
    body = hu > -500
    fat = ((hu > -150) & (hu < -50) & body).mean() / body.mean()
    soft = ((hu > 20) & (hu < 130) & body).mean() / body.mean()
    contrast = ((hu > 150) & (hu < 260)).sum()
    assert fat > 0.15 and soft > 0.2 and contrast > 100


@pytest.mark.parametrize("label", ["metastatic", "non_metastatic"])
def test_masks_lie_on_a_node_in_fat_with_the_class_size(phantom_dir, label):
    from scipy.ndimage import binary_dilation

    for row in [r for r in manifest_rows(phantom_dir) if r["label"] == label]:
        hu = read_ct_hu(phantom_dir / row["path"])
        mask = np.asarray(Image.open(phantom_dir / row["mask_path"])) > 0
        assert mask.shape == hu.shape
        spacing = float(read_dicom(phantom_dir / row["path"]).PixelSpacing[0])
        diameter_mm = 2 * np.sqrt(mask.sum() / np.pi) * spacing
        ring = binary_dilation(mask, iterations=2) & ~mask
        assert np.median(hu[ring]) < -30, "the node sits in fat"
        if label == "metastatic":
            assert diameter_mm > 16
            assert np.percentile(hu[mask], 90) > 20  # enhancing soft-tissue rim
        else:
            assert 2 < diameter_mm < 14  # oval: short axis < 9 mm, long axis up to twice that


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    # "a" in one process, "b" in a pool: the files must not depend on the number of workers.
    for name, seed, workers in (("a", 5, 1), ("b", 5, 2), ("c", 6, 1)):
        generate_phantom(tmp_path / name, n_per_class=4, seed=seed, image_size=48, progress=False,
                         slices_per_patient=1, num_workers=workers)
    assert file_digests(tmp_path / "a") == file_digests(tmp_path / "b")
    assert file_digests(tmp_path / "a") != file_digests(tmp_path / "c")


def test_field_of_view_body_position_and_noise_vary_between_patients(tmp_path):
    generate_phantom(tmp_path / "varied", n_per_class=8, seed=2, image_size=64, slices_per_patient=1, progress=False)
    spacings, body_centres = [], []
    for row in manifest_rows(tmp_path / "varied"):
        ds = read_dicom(tmp_path / "varied" / row["path"])
        hu = read_ct_hu(ds)
        spacings.append(float(ds.PixelSpacing[0]))
        body = hu > -500
        assert not (body[0].any() or body[-1].any() or body[:, 0].any() or body[:, -1].any()), "the body fits the view"
        body_centres.append(np.argwhere(body).mean(0) - (np.array(hu.shape) - 1) / 2)
    fov = np.array(spacings) * 64
    assert fov.min() >= FIELD_OF_VIEW_MM[0] and fov.max() <= FIELD_OF_VIEW_MM[1] and fov.max() / fov.min() > 1.2
    assert np.ptp(np.array(body_centres), axis=0).min() > 2  # pixels: not always at the image centre
    generate_phantom(tmp_path / "fixed", n_per_class=2, seed=2, image_size=64, slices_per_patient=1, progress=False,
                     field_of_view_mm=(400, 400))
    for row in manifest_rows(tmp_path / "fixed"):
        assert float(read_dicom(tmp_path / "fixed" / row["path"]).PixelSpacing[0]) == pytest.approx(400 / 64)


def test_noise_level_varies_between_patients(tmp_path):
    generate_phantom(tmp_path, n_per_class=6, seed=4, image_size=128, slices_per_patient=1, progress=False,
                     field_of_view_mm=(400, 400))
    air_noise = [read_ct_hu(tmp_path / row["path"])[:12, :12].std() for row in manifest_rows(tmp_path)]
    assert max(air_noise) / min(air_noise) > 1.5  # low-dose and standard-dose scans


def test_mean_intensity_does_not_give_the_class_away(tmp_path):
    generate_phantom(tmp_path, n_per_class=20, seed=0, image_size=64, slices_per_patient=1, progress=False)
    rows = manifest_rows(tmp_path)
    labels = [row["label"] == "metastatic" for row in rows]
    means = [np.clip(read_ct_hu(tmp_path / row["path"]), -140, 260).mean() for row in rows]
    assert 0.25 < roc_auc_score(labels, means) < 0.75


def test_cli_writes_the_contract_layout(tmp_path, capsys):
    manifest = main([str(tmp_path / "out"), "--n-per-class", "2", "--seed", "1", "--image-size", "32"])
    assert manifest == str(tmp_path / "out" / "manifest.csv")
    assert len(list((tmp_path / "out" / "metastatic").glob("*.dcm"))) == 2
    assert len(list((tmp_path / "out" / "non_metastatic").glob("*.dcm"))) == 2
    assert "4 synthetic CT slices" in capsys.readouterr().out


def test_rejects_an_empty_phantom_or_a_view_too_small_for_the_body(tmp_path, capsys):
    with pytest.raises(ValueError, match="n_per_class"):
        generate_phantom(tmp_path, n_per_class=0)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "small"), "--n-per-class", "1", "--field-of-view-mm", "200", "240"])
    assert capsys.readouterr().err.strip() == (
        "error: a field of view of 240.0 mm is too small for an adult abdomen; use at least 250 mm")


def test_volumes_are_a_dicom_series_the_same_nifti_and_a_node_mask_on_one_grid(tmp_path):
    from modeling.ct_volume import read_ct_volumes

    manifest = generate_phantom_volumes(tmp_path, n_per_class=2, seed=3, image_size=48, n_slices=(8, 10),
                                        progress=False, num_workers=1)
    rows = manifest_rows(tmp_path)
    assert manifest == str(tmp_path / "manifest.csv") and len(rows) == 4
    assert sorted(row["label"] for row in rows) == ["metastatic"] * 2 + ["non_metastatic"] * 2
    spacings = set()
    for row in rows:
        (series,) = read_ct_volumes(tmp_path / row["path"])
        (nifti,) = read_ct_volumes(tmp_path / "nifti" / f"{row['patient_id']}.nii.gz")
        (mask,) = read_ct_volumes(tmp_path / row["mask_path"])
        assert 8 <= len(series.hu) <= 10 and series.hu.shape[1:] == (48, 48)
        np.testing.assert_array_equal(series.hu, nifti.hu)
        assert mask.hu.shape == series.hu.shape and np.allclose(mask.spacing_mm, series.spacing_mm)
        assert series.spacing_mm[0] == pytest.approx(5.0)
        assert FIELD_OF_VIEW_MM[0] / 48 <= series.spacing_mm[1] <= FIELD_OF_VIEW_MM[1] / 48
        spacings.add(round(series.spacing_mm[1], 3))
        with_node = (mask.hu > 0.5).any(axis=(1, 2))
        assert 1 <= with_node.sum() < len(with_node)  # the node on a few sections, not all
        assert np.ptp(np.flatnonzero(with_node)) == with_node.sum() - 1  # one run of consecutive sections
        first_file = sorted((tmp_path / row["path"]).iterdir())[0]
        assert read_dicom(first_file).PatientID == row["patient_id"]
    assert len(spacings) == 4


def test_volumes_do_not_depend_on_the_number_of_workers(tmp_path, capsys):
    for name, workers in (("a", 1), ("b", 2)):
        generate_phantom_volumes(tmp_path / name, n_per_class=1, seed=5, image_size=32, n_slices=(8, 8),
                                 progress=False, num_workers=workers)
    assert file_digests(tmp_path / "a") == file_digests(tmp_path / "b")
    main([str(tmp_path / "cli"), "--volumes", "--n-per-class", "1", "--image-size", "32", "--volume-slices", "8", "9"])
    assert "2 synthetic CT volumes" in capsys.readouterr().out
    assert len(manifest_rows(tmp_path / "cli")) == 2
