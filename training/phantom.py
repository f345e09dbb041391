"""A synthetic contrast-enhanced (venous phase) abdominal CT phantom, written as real CT DICOM files.

SYNTHETIC DATA: it demonstrates and tests the pipeline; it is not evidence about patients.

Every slice shows a body outline (skin, subcutaneous fat, abdominal wall muscle), a vertebra with its
canal and paraspinal muscles, liver, spleen, kidneys, pancreas, aorta, IVC and SMV with contrast, bowel
loops (air or oral contrast), a few small benign mesenteric nodes, and one lymph node of interest in
peripancreatic fat:

- non-metastatic: small (short axis 4-9 mm), oval, with a fatty hilum;
- metastatic: enlarged (short axis 20-32 mm, a bulky node, so that a short CPU training run learns it),
  round, irregular margin, no hilum, usually (90 %) a necrotic low-density centre in an enhancing rim.

The node is the only class signal. What varies between real scans varies here too, per patient and
independently of the class, so that a model cannot lean on one geometry and the mean intensity of a
slice, or of the body, does not give the class away (AUC near 0.5): the field of view (300-500 mm by
default, i.e. 0.59-0.98 mm pixels at 512 px; at least the body's width plus a margin, as a
radiographer would set it), where the body lies in it, body size and fat, organ sizes, contrast timing,
the node's position and the noise level (6-20 HU). A patient has several slices (consecutive 5 mm
sections with the same anatomy and node, slightly changed). The mask of each slice marks its node of
interest (the lesion on metastatic slices) at native resolution.

    python -m training.phantom OUT --n-per-class N --seed S [--image-size 256] [--slices-per-patient 3]
                               [--field-of-view-mm 300 500]
    python -m training.phantom OUT --volumes --n-per-class N --seed S [--volume-slices 8 16]

The first writes `OUT/metastatic/*.dcm`, `OUT/non_metastatic/*.dcm`, `OUT/masks/*.png` and
`OUT/manifest.csv` (path,label,patient_id,mask_path; paths relative to OUT). The second writes a whole
volume per patient (8-16 sections, the node on the few it reaches): `OUT/series/<id>/` (a DICOM
series), `OUT/nifti/<id>.nii.gz` (the same volume), `OUT/masks/<id>.nii.gz` (the node mask on the same
grid) and `OUT/manifest.csv` with one volume row per patient. The same seed gives the same files.
"""

import argparse
import csv
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from modeling import CLASS_NAMES as LABELS  # index = label, as in the prepared dataset
from training.dicom_writer import deterministic_uid, write_ct_dicom, write_ct_nifti, write_ct_series

FIELD_OF_VIEW_MM = (300.0, 500.0)  # abdominal CT reconstructs 300-500 mm: 0.59-0.98 mm pixels at 512 px
FIELD_OF_VIEW_MARGIN_MM = 30.0  # the field of view is at least the body's width plus this
SLICE_THICKNESS_MM = 5.0
VOLUME_SLICES = (8, 16)  # sections per phantom volume (--volumes), low and high

# Hounsfield units of the tissues (venous phase). Each slice draws its own value around these.
HU = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 50.0,
    "liver": 105.0,
    "spleen": 115.0,
    "kidney": 170.0,
    "pancreas": 90.0,
    "vessel": 175.0,
    "bowel_wall": 45.0,
    "oral_contrast": 260.0,
    "bone_cortex": 700.0,
    "bone_marrow": 230.0,
    "csf": 10.0,
    "node": 50.0,
    "necrosis": 5.0,
}


@dataclass
class Node:
    """The lymph node of interest, in mm from the image centre (x right, y down = posterior)."""

    x: float
    y: float
    short_axis: float
    long_axis: float
    angle: float
    metastatic: bool
    necrosis_fraction: float  # radius of the necrotic core / node radius; 0 = none
    margin_phases: np.ndarray  # irregular margin: phases of 3 low-frequency harmonics
    margin_amplitude: float


class Canvas:
    """An HU image with painters for the shapes the phantom is made of, in mm from the body's centre.

    The body's centre lies `offset_mm` (x, y) from the image centre, as a patient lies off the
    scanner's isocentre.
    """

    def __init__(self, size: int, fov_mm: float, offset_mm=(0.0, 0.0)):
        self.spacing = fov_mm / size
        centres = (np.arange(size) - (size - 1) / 2.0) * self.spacing
        self.y, self.x = np.meshgrid(centres - offset_mm[1], centres - offset_mm[0], indexing="ij")
        self.hu = np.full((size, size), HU["air"], dtype=np.float32)

    def ellipse(self, cx, cy, rx, ry, angle=0.0) -> np.ndarray:
        """Boolean mask of a rotated ellipse (semi-axes `rx`, `ry` mm, `angle` radians)."""
        cos, sin = np.cos(angle), np.sin(angle)
        dx, dy = self.x - cx, self.y - cy
        u = (dx * cos + dy * sin) / rx
        v = (-dx * sin + dy * cos) / ry
        return u * u + v * v <= 1.0

    def paint(self, mask: np.ndarray, value: float) -> None:
        self.hu[mask] = value


def _patient_anatomy(rng: np.random.Generator, field_of_view_mm=FIELD_OF_VIEW_MM) -> Dict[str, float]:
    """Per-patient shape and scan parameters (mm, HU offsets); slices jitter around them."""
    low, high = field_of_view_mm
    body_rx = min(rng.uniform(110, 160), (high - FIELD_OF_VIEW_MARGIN_MM) / 2)  # the body fits the widest view
    fov = rng.uniform(min(max(low, 2 * body_rx + FIELD_OF_VIEW_MARGIN_MM), high), high)
    slack = (fov - 2 * body_rx) / 2  # room around the body, shared out as an off-centre position
    return {
        "fov_mm": fov,
        "offset_x": rng.uniform(-0.3, 0.3) * slack,
        "offset_y": rng.uniform(-0.1, 0.3) * slack,  # patients lie low on the table more often than high
        "body_rx": body_rx,
        "body_ry": max(80.0, body_rx * rng.uniform(0.68, 0.8)),
        "subcutaneous_fat": rng.uniform(8, 35) * body_rx / 130,
        "liver_scale": rng.uniform(0.7, 1.3),
        "spleen_scale": rng.uniform(0.6, 1.3),
        "enhancement": rng.uniform(-25, 25),  # contrast timing: shifts vessels and organs together
        "fat_hu": rng.uniform(-115, -80),
        "noise_sd": rng.uniform(6, 20),  # from smooth to low-dose reconstructions
        "n_bowel": int(rng.integers(3, 9)),
        "n_benign_nodes": int(rng.integers(0, 3)),
    }


def _node(rng: np.random.Generator, metastatic: bool, anatomy: Dict[str, float]) -> Node:
    """The node of interest: in the fat just anterior to the pancreas, clear of the vessels."""
    if metastatic:
        short = rng.uniform(20, 32)
        long = short * rng.uniform(1.0, 1.1)
        necrosis = rng.uniform(0.4, 0.65) if rng.random() < 0.9 else 0.0
        amplitude = rng.uniform(0.06, 0.14)
    else:
        short = rng.uniform(4, 9)
        long = short * rng.uniform(1.4, 2.0)
        necrosis, amplitude = 0.0, 0.0
    x = rng.uniform(-35, 50)
    y = _pancreas_y(anatomy) - 11 - short / 2 - rng.uniform(0, 6)
    return Node(x, y, short, long, rng.uniform(0, np.pi), metastatic, necrosis, rng.uniform(0, 2 * np.pi, 3), amplitude)


def _pancreas_y(anatomy: Dict[str, float]) -> float:
    return anatomy["body_ry"] * 0.05 - 22


def _paint_fat_pad(canvas: Canvas, node: Node, rng: np.random.Generator, fat_hu: float) -> None:
    """Peripancreatic fat around the node (it clears bowel and liver where the node sits)."""
    margin = rng.uniform(5, 10)
    pad = canvas.ellipse(node.x, node.y, node.long_axis / 2 + margin, node.short_axis / 2 + margin, node.angle)
    canvas.paint(pad, fat_hu + rng.normal(0, 5))


def _paint_node(canvas: Canvas, node: Node, rng: np.random.Generator, node_hu: float) -> np.ndarray:
    """Paint `node` and return its mask (node outline, hilum and necrotic core included)."""
    cos, sin = np.cos(node.angle), np.sin(node.angle)
    dx, dy = canvas.x - node.x, canvas.y - node.y
    u = (dx * cos + dy * sin) / (node.long_axis / 2)
    v = (-dx * sin + dy * cos) / (node.short_axis / 2)
    radius = np.sqrt(u * u + v * v)
    if node.margin_amplitude:  # lobulated, irregular margin from 3 low-frequency harmonics
        theta = np.arctan2(v, u)
        wobble = sum(np.sin(k * theta + phase) for k, phase in zip((3, 5, 7), node.margin_phases, strict=True)) / 3
        radius = radius / (1 + node.margin_amplitude * wobble)
    mask = radius <= 1.0
    canvas.paint(mask, node_hu + (25 if node.metastatic else 0))  # viable tumour enhances more
    if node.necrosis_fraction:
        canvas.paint(radius <= node.necrosis_fraction, HU["necrosis"] + rng.normal(0, 5))
    if not node.metastatic:  # fatty hilum: a fat wedge entering from one end of the long axis
        hilum = canvas.ellipse(
            node.x + cos * node.long_axis * 0.3, node.y + sin * node.long_axis * 0.3,
            node.long_axis * 0.28, node.short_axis * 0.2, node.angle,
        )
        canvas.paint(hilum & mask, HU["fat"] + 20)
    return mask


def _paint_body(canvas: Canvas, rng: np.random.Generator, anatomy: Dict[str, float]) -> Tuple[float, float]:
    """Skin, subcutaneous fat, abdominal wall and visceral fat; returns the cavity's semi-axes (mm)."""
    jitter = lambda: rng.normal(1.0, 0.03)  # noqa: E731 - slice-to-slice change of the body outline
    fat = anatomy["fat_hu"]
    rx, ry = anatomy["body_rx"] * jitter(), anatomy["body_ry"] * jitter()
    canvas.paint(canvas.ellipse(0, 0, rx, ry), HU["muscle"] - 20)  # skin
    canvas.paint(canvas.ellipse(0, 0, rx - 2, ry - 2), fat)  # subcutaneous fat
    wall_rx, wall_ry = rx - 2 - anatomy["subcutaneous_fat"], ry - 2 - anatomy["subcutaneous_fat"] * 0.8
    canvas.paint(canvas.ellipse(0, 0, wall_rx, wall_ry), HU["muscle"] + rng.normal(0, 5))
    cav_rx, cav_ry = wall_rx - 9, wall_ry - 9
    canvas.paint(canvas.ellipse(0, 0, cav_rx, cav_ry), fat + rng.normal(0, 5))  # visceral fat
    return cav_rx, cav_ry


def _paint_retroperitoneum(canvas: Canvas, rng: np.random.Generator, anatomy: Dict[str, float], cav_ry: float) -> float:
    """Vertebra, canal, paraspinal muscles and kidneys; returns the vertebra's y (mm)."""
    spine_y = cav_ry * 0.62
    canvas.paint(canvas.ellipse(-32, spine_y + 22, 24, 18), HU["muscle"])
    canvas.paint(canvas.ellipse(32, spine_y + 22, 24, 18), HU["muscle"])
    canvas.paint(canvas.ellipse(0, spine_y, 20, 17), HU["bone_cortex"] + rng.normal(0, 40))
    canvas.paint(canvas.ellipse(0, spine_y, 17, 14), HU["bone_marrow"] + rng.normal(0, 30))
    canvas.paint(canvas.ellipse(0, spine_y + 25, 8, 7), HU["csf"])
    for side in (-1, 1):
        kidney_x = side * rng.uniform(55, 70)
        canvas.paint(canvas.ellipse(kidney_x, spine_y - 2, 26, 36, side * 0.4), HU["kidney"] + anatomy["enhancement"])
        canvas.paint(canvas.ellipse(kidney_x, spine_y - 2, 10, 18, side * 0.4), HU["fat"] + 40)  # sinus
    return spine_y


def _paint_viscera(canvas: Canvas, rng: np.random.Generator, anatomy: Dict[str, float], cavity) -> None:
    """Liver (patient's right = image left) and spleen, sized per patient, and the bowel loops in the
    anterior abdomen (air or oral contrast, with a soft-tissue wall), inside `cavity` = (rx, ry) mm."""
    cav_rx, cav_ry = cavity
    enh = anatomy["enhancement"]
    liver = canvas.ellipse(-cav_rx * 0.55, -cav_ry * 0.05, cav_rx * 0.45 * anatomy["liver_scale"],
                           cav_ry * 0.6 * anatomy["liver_scale"], 0.3)
    canvas.paint(liver & canvas.ellipse(0, 0, cav_rx, cav_ry), HU["liver"] + enh * 0.6 + rng.normal(0, 4))
    spleen_scale = anatomy["spleen_scale"]
    spleen = canvas.ellipse(cav_rx * 0.68, cav_ry * 0.15, 30 * spleen_scale, 45 * spleen_scale, -0.5)
    canvas.paint(spleen & canvas.ellipse(0, 0, cav_rx, cav_ry), HU["spleen"] + enh * 0.6)
    for _ in range(anatomy["n_bowel"]):
        bx, by = rng.uniform(-cav_rx * 0.6, cav_rx * 0.6), rng.uniform(-cav_ry * 0.85, -cav_ry * 0.35)
        radius, aspect = rng.uniform(8, 20), rng.uniform(0.7, 1.0)
        canvas.paint(canvas.ellipse(bx, by, radius, radius * aspect), HU["bowel_wall"])
        lumen = HU["air"] if rng.random() < 0.5 else HU["oral_contrast"] + rng.normal(0, 30)
        canvas.paint(canvas.ellipse(bx, by, radius - 2.5, radius * aspect - 2.5), lumen)


def _paint_vessels(canvas: Canvas, anatomy: Dict[str, float], spine_y: float, node_mask: np.ndarray) -> None:
    """Aorta, IVC, SMA and SMV, painted last so that they stay visible next to the node, as in a real
    slice; `node_mask` loses what they cover."""
    vessel, pancreas_y = HU["vessel"] + anatomy["enhancement"], _pancreas_y(anatomy)
    vessels = [
        (canvas.ellipse(12, spine_y - 32, 11, 11), vessel),  # aorta
        (canvas.ellipse(-22, spine_y - 30, 12, 9), vessel - 15),  # IVC
        (canvas.ellipse(10, pancreas_y + 10, 5, 5), vessel),  # SMA
        (canvas.ellipse(-8, pancreas_y + 8, 6, 6), vessel - 10),  # SMV
    ]
    for mask, value in vessels:
        canvas.paint(mask, value)
        node_mask &= ~mask  # a vessel drawn over the node is not node


def _scanned(canvas: Canvas, rng: np.random.Generator, noise_sd: float) -> np.ndarray:
    """The painted HU through the scanner: a 0.8 mm point spread and correlated noise of `noise_sd` HU."""
    hu = gaussian_filter(canvas.hu, 0.8 / canvas.spacing)
    noise = gaussian_filter(rng.normal(0, 1, hu.shape).astype(np.float32), 0.7)
    hu += noise * noise_sd / noise.std()
    return np.clip(hu, -1024, 3000).astype(np.float32)


def render_slice(rng: np.random.Generator, anatomy: Dict[str, float], node: Optional[Node], size: int):
    """One phantom slice: (HU `float32` `(size, size)`, node mask `bool` `(size, size)`).

    `node` None draws a slice above or below the node of interest (an empty mask). The parts are
    painted in this order, each over the last, and draw from `rng` in it: the files of a seed depend on it.
    """
    canvas = Canvas(size, anatomy["fov_mm"], (anatomy["offset_x"], anatomy["offset_y"]))
    cav_rx, cav_ry = _paint_body(canvas, rng, anatomy)
    spine_y = _paint_retroperitoneum(canvas, rng, anatomy, cav_ry)
    _paint_viscera(canvas, rng, anatomy, (cav_rx, cav_ry))

    # Pancreas: a band across the midline, anterior to the vessels, with the node's fat in front.
    if node is not None:
        _paint_fat_pad(canvas, node, rng, anatomy["fat_hu"])
    pancreas_y, pancreas_hu = _pancreas_y(anatomy), HU["pancreas"] + anatomy["enhancement"] * 0.4
    for x in np.linspace(-50, 60, 12):
        canvas.paint(canvas.ellipse(x, pancreas_y + 0.003 * x * x, 12, 9), pancreas_hu)

    # Small benign mesenteric nodes, in both classes, so "a node is visible" is no cue.
    for _ in range(anatomy["n_benign_nodes"]):
        canvas.paint(canvas.ellipse(rng.uniform(-60, 60), rng.uniform(-cav_ry * 0.3, 0), rng.uniform(3, 5),
                                    rng.uniform(2, 4), rng.uniform(0, np.pi)), HU["node"])

    node_hu = HU["node"] + rng.normal(0, 6)
    node_mask = _paint_node(canvas, node, rng, node_hu) if node is not None else np.zeros(canvas.hu.shape, bool)
    _paint_vessels(canvas, anatomy, spine_y, node_mask)
    return _scanned(canvas, rng, anatomy["noise_sd"]), node_mask


def generate_phantom(
    out_dir,
    n_per_class: int,
    seed: int = 0,
    image_size: int = 256,
    slices_per_patient: int = 3,
    progress: bool = True,
    num_workers: Optional[int] = None,
    field_of_view_mm: Tuple[float, float] = FIELD_OF_VIEW_MM,
) -> str:
    """Write `n_per_class` slices per class (in patients of `slices_per_patient`) under `out_dir`.

    Returns the path of `out_dir/manifest.csv` (path,label,patient_id,mask_path; relative paths).
    Each patient's field of view is drawn from `field_of_view_mm` (low, high; equal values fix it).
    Patients are written by `num_workers` processes (default: one per CPU); each has its own random
    generator, so the files are the same whatever the number of workers.
    """
    if n_per_class < 1 or slices_per_patient < 1:
        raise ValueError(f"n_per_class and slices_per_patient must be >= 1, got {n_per_class}, {slices_per_patient}")
    _check_field_of_view(field_of_view_mm)
    out_dir = os.fspath(out_dir)
    for folder in (*LABELS, "masks"):
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
    jobs = []  # (label, patient index, slices of that patient)
    for label in (1, 0):
        for start in range(0, n_per_class, slices_per_patient):
            jobs.append((label, len(jobs), min(slices_per_patient, n_per_class - start)))
    arguments = [(out_dir, seed, label, index, n_slices, image_size, tuple(field_of_view_mm))
                 for label, index, n_slices in jobs]
    bar = tqdm(total=2 * n_per_class, desc="phantom slices", unit="slice", disable=not progress)
    rows = _run_patients(_write_patient, arguments, num_workers, bar)
    return _write_manifest(os.path.join(out_dir, "manifest.csv"), rows)


def _check_field_of_view(field_of_view_mm) -> None:
    low, high = field_of_view_mm
    if not 0 < low <= high:
        raise ValueError(f"field of view must be 0 < low <= high mm, got {low}, {high}")
    if high < 2 * 110 + FIELD_OF_VIEW_MARGIN_MM:
        raise ValueError(f"a field of view of {high} mm is too small for an adult abdomen; use at least 250 mm")


def _run_patients(write, arguments: list, num_workers: Optional[int], bar) -> List[Dict[str, str]]:
    """`write(*args)` for each patient's `args` (in a process pool) -> all manifest rows, in patient order."""
    rows: List[Dict[str, str]] = []
    num_workers = min(num_workers or os.cpu_count() or 1, len(arguments))
    if num_workers > 1:
        with ProcessPoolExecutor(num_workers) as pool:
            for patient_rows in pool.map(write, *zip(*arguments, strict=True), chunksize=4):
                rows.extend(patient_rows)
                bar.update(len(patient_rows))
    else:
        for args in arguments:
            patient_rows = write(*args)
            rows.extend(patient_rows)
            bar.update(len(patient_rows))
    bar.close()
    return rows


def _write_manifest(path: str, rows: List[Dict[str, str]]) -> str:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_patient(out_dir, seed, label, patient_index, n_slices, image_size, field_of_view_mm):
    """One patient's slices as DICOM files and mask PNGs -> its manifest rows."""
    # One generator per patient: the files do not depend on the order patients are written in.
    rng = np.random.default_rng([seed, patient_index])
    patient_id = f"PHANTOM-{seed:03d}-{patient_index:04d}"
    anatomy = _patient_anatomy(rng, field_of_view_mm)
    node = _node(rng, bool(label), anatomy)
    study_uid = deterministic_uid("phantom", seed, patient_index, "study")
    series_uid = deterministic_uid("phantom", seed, patient_index, "series")
    rows = []
    for index in range(n_slices):
        slice_node = Node(**{**node.__dict__, "short_axis": node.short_axis * rng.uniform(0.9, 1.05),
                             "x": node.x + rng.normal(0, 1.5), "y": node.y + rng.normal(0, 1.5)})
        hu, mask = render_slice(rng, anatomy, slice_node, image_size)
        name = f"{patient_id}_{index:02d}"
        dicom_path = os.path.join(LABELS[label], f"{name}.dcm")
        mask_path = os.path.join("masks", f"{name}.png")
        write_ct_dicom(
            os.path.join(out_dir, dicom_path), hu, patient_id=patient_id, study_uid=study_uid,
            series_uid=series_uid, sop_uid=deterministic_uid("phantom", seed, patient_index, index),
            instance_number=index + 1, pixel_spacing=(anatomy["fov_mm"] / image_size,) * 2,
            slice_thickness=SLICE_THICKNESS_MM, slice_location=index * SLICE_THICKNESS_MM,
        )
        Image.fromarray(mask).save(os.path.join(out_dir, mask_path))  # bool -> a 1-bit PNG, small and quick to read
        rows.append({"path": dicom_path, "label": LABELS[label], "patient_id": patient_id, "mask_path": mask_path})
    return rows


def generate_phantom_volumes(
    out_dir,
    n_per_class: int,
    seed: int = 0,
    image_size: int = 256,
    n_slices: Tuple[int, int] = VOLUME_SLICES,
    progress: bool = True,
    num_workers: Optional[int] = None,
    field_of_view_mm: Tuple[float, float] = FIELD_OF_VIEW_MM,
) -> str:
    """Write `n_per_class` phantom patients per class as whole volumes under `out_dir`.

    Per patient (`PHANTOM-SSS-NNNN`): `series/<id>/` a DICOM series, `nifti/<id>.nii.gz` the same
    volume, `masks/<id>.nii.gz` its node-of-interest mask on the same grid; `n_slices` (low, high)
    consecutive 5 mm sections, the node on the few its size reaches. Returns `out_dir/manifest.csv`
    (path,label,patient_id,mask_path with the series folders as paths), which `training.prepare` reads
    (swap a path for the NIfTI file to prepare from NIfTI). Deterministic, whatever `num_workers`.
    """
    low, high = n_slices
    if n_per_class < 1 or not 3 <= low <= high:
        raise ValueError(f"n_per_class must be >= 1 and slices 3 <= low <= high, got {n_per_class}, {n_slices}")
    _check_field_of_view(field_of_view_mm)
    out_dir = os.fspath(out_dir)
    for folder in ("series", "nifti", "masks"):
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
    arguments = [(out_dir, seed, label, index, image_size, (low, high), tuple(field_of_view_mm))
                 for index, label in enumerate([1] * n_per_class + [0] * n_per_class)]
    bar = tqdm(total=2 * n_per_class, desc="phantom volumes", unit="volume", disable=not progress)
    rows = _run_patients(_write_patient_volume, arguments, num_workers, bar)
    return _write_manifest(os.path.join(out_dir, "manifest.csv"), rows)


def _node_sections(rng: np.random.Generator, node: Node, n_slices: int) -> List[Optional[Node]]:
    """The node of interest as cut by each of `n_slices` sections (None where it is absent).

    A roughly ellipsoidal node: its half-height is the short axis's half times 1-1.5; a section at
    height dz shows it shrunk by sqrt(1 - (dz / half-height)^2), and not at all below 0.4 of its size.
    """
    half_height = node.short_axis / 2 * rng.uniform(1.0, 1.5)
    centre = rng.integers(2, n_slices - 2) * SLICE_THICKNESS_MM + rng.uniform(-0.4, 0.4) * SLICE_THICKNESS_MM
    sections = []
    for k in range(n_slices):
        dz = (k * SLICE_THICKNESS_MM - centre) / half_height
        scale = np.sqrt(max(0.0, 1.0 - dz * dz))
        if scale < 0.4:
            sections.append(None)
            continue
        sections.append(Node(**{**node.__dict__, "short_axis": node.short_axis * scale,
                                "long_axis": node.long_axis * scale,
                                "x": node.x + rng.normal(0, 1.0), "y": node.y + rng.normal(0, 1.0)}))
    return sections


def _write_patient_volume(out_dir, seed, label, patient_index, image_size, n_slices, field_of_view_mm):
    """One patient's volume as a DICOM series, NIfTI, and a NIfTI node mask -> its manifest row."""
    rng = np.random.default_rng([seed, patient_index, 1])  # its own stream: not the slice phantom's patient
    patient_id = f"PHANTOM-{seed:03d}-{patient_index:04d}"
    anatomy = _patient_anatomy(rng, field_of_view_mm)
    node = _node(rng, bool(label), anatomy)
    sections = _node_sections(rng, node, int(rng.integers(n_slices[0], n_slices[1] + 1)))
    rendered = [render_slice(rng, anatomy, section, image_size) for section in sections]
    hu = np.stack([slice_hu for slice_hu, _ in rendered])  # (slices, rows, columns), inferior to superior
    masks = np.stack([mask for _, mask in rendered])
    spacing = (SLICE_THICKNESS_MM, anatomy["fov_mm"] / image_size, anatomy["fov_mm"] / image_size)
    write_ct_series(
        os.path.join(out_dir, "series", patient_id), hu, spacing, patient_id=patient_id,
        study_uid=deterministic_uid("phantom volume", seed, patient_index, "study"),
        series_uid=deterministic_uid("phantom volume", seed, patient_index, "series"),
    )
    write_ct_nifti(os.path.join(out_dir, "nifti", f"{patient_id}.nii.gz"), hu, spacing)
    mask_path = os.path.join("masks", f"{patient_id}.nii.gz")
    write_ct_nifti(os.path.join(out_dir, mask_path), masks.astype(np.float32), spacing)
    return [{"path": os.path.join("series", patient_id), "label": LABELS[label], "patient_id": patient_id,
             "mask_path": mask_path}]


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="output folder")
    parser.add_argument("--n-per-class", type=int, default=150,
                        help="slices per class (default 150); with --volumes, patients per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=256, help="native rows = columns (default 256)")
    parser.add_argument("--slices-per-patient", type=int, default=3)
    parser.add_argument("--volumes", action="store_true",
                        help="whole volumes per patient: DICOM series, NIfTI and a NIfTI node mask")
    parser.add_argument("--volume-slices", type=int, nargs=2, default=VOLUME_SLICES, metavar=("LOW", "HIGH"),
                        help="sections per volume with --volumes (default 8 16)")
    parser.add_argument("--field-of-view-mm", type=float, nargs=2, default=FIELD_OF_VIEW_MM, metavar=("LOW", "HIGH"),
                        help="range of each patient's field of view (default 300 500; pixel spacing = it / image size)")
    parser.add_argument("--num-workers", type=int, help="processes (default: one per CPU)")
    args = parser.parse_args(argv)
    try:
        if args.volumes:
            manifest = generate_phantom_volumes(args.out_dir, args.n_per_class, args.seed, args.image_size,
                                                tuple(args.volume_slices), num_workers=args.num_workers,
                                                field_of_view_mm=args.field_of_view_mm)
        else:
            manifest = generate_phantom(args.out_dir, args.n_per_class, args.seed, args.image_size,
                                        args.slices_per_patient, num_workers=args.num_workers,
                                        field_of_view_mm=args.field_of_view_mm)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    what = "CT volumes (DICOM series + NIfTI + node masks)" if args.volumes else "CT slices"
    print(f"wrote {2 * args.n_per_class} synthetic {what} and {manifest}")
    return manifest


if __name__ == "__main__":
    main()
