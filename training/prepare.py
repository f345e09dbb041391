"""CT slices and volumes with labels -> a patient-grouped, label-stratified `datasets.DatasetDict` on disk.

    python -m training.prepare INPUT --output DS [--png-dir DIR] [--size 224] [--pixel-spacing-mm X] [--seed 0]

INPUT is a folder with one sub-folder per class (`metastatic`/`non_metastatic`, or the paper's
`cancer`/`normal`) or a CSV manifest `path,label[,patient_id][,mask_path][,slices]` (paths relative to
the CSV; labels as class names or 0/1). A `path` is a slice, DICOM (any extension) or already-windowed
PNG/JPEG/TIFF with an optional mask image of the same size, or a volume: a DICOM series folder, a zip
of one, or a NIfTI file. A volume row needs a `mask_path` (a NIfTI mask on the volume's grid, its slices
at the volume's z positions: the slices where it is non-empty are used, each with its own lesion mask)
or `slices` (`12-18` or `12,14,15`: indices from inferior to superior, as `modeling.ct_volume` orders
them), or both.

Each slice is windowed and resized exactly as the model's `CTImageProcessor` does (with
`--pixel-spacing-mm`, resampled to that spacing and cropped/padded to `--size`), so training sees what
inference sees. Splits (66.7/16.7/16.7) are stratified by label and grouped by patient: `patient_id`
from the manifest, else the DICOM PatientID, else the StudyInstanceUID, for slices and DICOM series
alike (a NIfTI volume row without one is its own patient: NIfTI holds no patient tag). IDs read from
DICOM are stored only as salted hashes, never as read.

Writes `DS/` (`save_to_disk`), `DS/prepare_info.json` (window, size, pixel spacing, seed, train
mean/std, counts) and `DS/bad_files.csv` (path,reason): every file or row that could not be used is
listed there and on screen.
"""

import argparse
import csv
import hashlib
import json
import os
import secrets
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

import datasets
import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold
from tqdm.auto import tqdm

from modeling import CLASS_NAMES, CTImageProcessor
from modeling.ct_dicom import pixel_spacing_of, read_ct_hu, read_dicom
from modeling.ct_volume import CTVolume, extracted_zip, find_files, is_volume_file, read_ct_volumes, series_key
from modeling.image_processing_ct import IMAGE_SUFFIXES, read_image_file

LABEL_ALIASES = {"non_metastatic": 0, "normal": 0, "0": 0, "metastatic": 1, "cancer": 1, "1": 1}
SPLITS = ("train", "validation", "test")
N_FOLDS = 6  # one fold test, one validation, four train: 16.7 / 16.7 / 66.7 %
# How far (in slice spacings) a mask's slice may lie from the volume's along z: further than half a
# slice, the CT slice nearest to a mask slice is another one, so its lesion would label the wrong slice.
MASK_POSITION_TOLERANCE_SLICES = 0.5
# How much a mask's voxel spacing may differ from the volume's, relative: NIfTI stores it as float32,
# DICOM as decimal strings, so one grid's spacings can differ in their last digits.
MASK_SPACING_RTOL = 1e-3
# Hex digits kept of a DICOM ID's salted hash: 48 bits, so that no two patients of even a large cohort
# share a stored patient_id.
PSEUDONYM_HEX_DIGITS = 12
# Records per reader process at least, so that a small input does not start a process for every few files.
MIN_RECORDS_PER_READER = 8
# Records handed to a reader at once, so that the pool's pipe is crossed per chunk, not per record.
READER_CHUNK = 16


@dataclass
class Record:
    """One input before reading: a slice, or a volume (series folder, zip, NIfTI) with the slices to use.

    `patient_id` is None unless a manifest gave one; `slices` is a volume row's `slices` column as given.
    """

    source: str  # as given (relative to the manifest or the input folder)
    path: str  # absolute path used for reading
    label: int
    patient_id: Optional[str] = None
    mask_path: Optional[str] = None
    slices: Optional[str] = None

    @property
    def is_volume(self) -> bool:
        return os.path.isdir(self.path) or is_volume_file(self.path)


@dataclass
class Slice:
    """One slice after reading: model-size arrays and its grouping key (raw, never stored as read)."""

    record: Record
    image: np.ndarray  # float32 (size, size), window in [0, 1]
    mask: np.ndarray  # uint8 (size, size), 1 on the lesion
    has_mask: bool
    group_key: str
    png_path: Optional[str] = None  # relative to --png-dir, when written


def features(size: int) -> datasets.Features:
    return datasets.Features({
        "image": datasets.Array2D((size, size), "float32"),
        "label": datasets.ClassLabel(names=CLASS_NAMES),
        "patient_id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "mask": datasets.Array2D((size, size), "uint8"),
        "has_mask": datasets.Value("bool"),
    })


def parse_label(value: str) -> int:
    key = str(value).strip().lower().replace("-", "_").replace(" ", "_")
    if key not in LABEL_ALIASES:
        raise ValueError(f"unknown label {value!r}; use one of {sorted(LABEL_ALIASES)}")
    return LABEL_ALIASES[key]


def records_from_folder(folder: str) -> List[Record]:
    """Files under `folder/<class>/` (recursively, hidden files skipped), labelled by the class folder."""
    records = []
    class_dirs = [d for d in sorted(os.listdir(folder)) if d.lower() in LABEL_ALIASES and not d.isdigit()]
    if not class_dirs:
        raise ValueError(
            f"{folder} has no class folders; expected sub-folders metastatic/non_metastatic (or cancer/normal)"
        )
    for class_dir in class_dirs:
        label = LABEL_ALIASES[class_dir.lower()]
        for root, dirs, files in os.walk(os.path.join(folder, class_dir)):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith("."):
                    path = os.path.join(root, name)
                    records.append(Record(os.path.relpath(path, folder), os.path.abspath(path), label))
    return records


def records_from_manifest(manifest: str) -> Tuple[List[Record], List[Tuple[str, str]]]:
    """Rows of a CSV manifest -> (records, bad rows as (path, reason)). Paths are relative to the CSV."""
    base = os.path.dirname(os.path.abspath(manifest))
    records, bad = [], []
    with open(manifest, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"{manifest} lacks column(s) {sorted(missing)}; expected path,label[,patient_id][,mask_path][,slices]"
            )
        for line, row in enumerate(reader, start=2):  # line 1 is the header
            source = (row.get("path") or "").strip()
            if not source:
                bad.append((f"{manifest}:{line}", "empty path"))
                continue
            try:
                label = parse_label(row.get("label", ""))
            except ValueError as error:
                bad.append((source, str(error)))
                continue
            path = os.path.join(base, source)
            if not os.path.exists(path):
                bad.append((source, "listed in the manifest but missing"))
                continue
            mask = (row.get("mask_path") or "").strip()
            record = Record(source, path, label, (row.get("patient_id") or "").strip() or None,
                            os.path.join(base, mask) if mask else None, (row.get("slices") or "").strip() or None)
            reason = _row_refusal(record)
            if reason:
                bad.append((source, reason))
            else:
                records.append(record)
    return records, bad


def _row_refusal(record: Record) -> Optional[str]:
    """Why a manifest row cannot be read as given, or None."""
    if record.is_volume:
        if not (record.mask_path or record.slices):
            return "a volume row needs a mask_path (a NIfTI mask on the same grid) or slices (12-18 or 12,14,15)"
    elif record.slices:
        return "a slices column applies to volumes (series folder, zip, NIfTI), not to one slice"
    elif os.path.isdir(record.path):
        return "a folder; only volume rows may name one"
    return None


def parse_slices(text: str, n_slices: int) -> List[int]:
    """A `slices` value (`12-18`, `12,14,15`, or both: `3-5,9`) -> sorted indices into `n_slices` slices."""
    indices = set()
    for part in text.replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"slices {text!r}: expected indices such as 12-18 or 12,14,15")
        first, last = int(first), int(last) if dash else int(first)
        if first > last:
            raise ValueError(f"slices {text!r}: {part} runs backwards")
        if last >= n_slices:
            raise ValueError(f"slices {text!r}: out of range, the volume has {n_slices} slices (0-{n_slices - 1})")
        indices.update(range(first, last + 1))
    return sorted(indices)


# Per reader process: the processor and the PNG folder, set once by `_init_reader` (not pickled per job).
_READER: Dict[str, object] = {}


def _init_reader(processor: CTImageProcessor, png_dir: Optional[str]) -> None:
    torch.set_num_threads(1)  # one reader per core: torch's own threads would oversubscribe the pool
    _READER.update(processor=processor, png_dir=png_dir)


def _read_record(record: Record, index: int) -> list:
    """One record -> its `Slice`s (one, or a volume's selected slices), or `[(source, reason)]`."""
    reason = _row_refusal(record)
    if reason:
        return [(record.source, reason)]
    try:
        return _read_volume(record, index) if record.is_volume else [_read_slice(record, index)]
    except (ValueError, OSError) as error:
        return [(record.source, str(error).splitlines()[0])]


def _read_slice(record: Record, index: int) -> Slice:
    """One DICOM or windowed image (and its mask image) -> a `Slice` at the model's input size."""
    processor = _READER["processor"]
    group_key = record.patient_id and f"manifest:{record.patient_id}"
    spacing = None
    if record.path.lower().endswith(IMAGE_SUFFIXES):
        unit = read_image_file(record.path)
        group_key = group_key or f"file:{record.source}"  # no ID in a PNG: the file is its own group
    else:
        ds = read_dicom(record.path)
        group_key = group_key or dicom_group_key(ds, record.source)
        unit = window_in_place(read_ct_hu(ds), processor.window_center, processor.window_width)
        spacing = pixel_spacing_of(ds)
    image = model_input(unit, spacing, processor)
    mask, has_mask = np.zeros(image.shape, np.uint8), False
    if record.mask_path:
        try:
            mask, has_mask = _mask_file_at_size(record.mask_path, unit.shape, spacing, processor), True
        except (ValueError, OSError) as error:
            raise ValueError(f"mask {os.path.basename(record.mask_path)}: {str(error).splitlines()[0]}") from None
    stem = os.path.splitext(os.path.basename(record.source))[0]
    png_path = _write_png(index, stem, record.label, unit)
    return Slice(record, image, mask, has_mask, group_key, png_path)


def _read_volume(record: Record, index: int) -> List[Slice]:
    """The slices of a volume row that its mask marks (or its `slices` column names), each with its mask."""
    processor = _READER["processor"]
    volume, group_key = _volume_and_group_key(record)
    masks = _volume_masks(record, volume) if record.mask_path else None
    if record.slices:
        indices = parse_slices(record.slices, len(volume.hu))
    else:
        indices = [int(k) for k in np.flatnonzero(masks.any(axis=(1, 2)))]
        if not indices:
            raise ValueError("the mask is empty: no slice to use")
    spacing = tuple(volume.spacing_mm[1:])
    stem = os.path.basename(record.source.rstrip("/\\")).split(".")[0]
    slices = []
    for k in indices:
        unit = window_in_place(volume.hu[k].copy(), processor.window_center, processor.window_width)
        mask = np.zeros((processor.size,) * 2, np.uint8)
        if masks is not None:
            mask = _mask_array_at_size(masks[k], spacing, processor)
        slice_record = replace(record, source=f"{record.source}[{k}]", slices=None)
        png_path = _write_png(index, f"{stem}_{k:03d}", record.label, unit)
        slices.append(Slice(slice_record, model_input(unit, spacing, processor), mask, masks is not None,
                            group_key, png_path))
    return slices


def dicom_group_key(header, source: str) -> str:
    """The grouping key of a DICOM slice or series: its PatientID, else its StudyInstanceUID, else `source`.

    Raw, so that a patient's slice rows and volume rows meet; only `pseudonym` of it is ever shown or stored.
    """
    dicom_id = str(header.get("PatientID", "") or "").strip() or str(header.get("StudyInstanceUID", "") or "")
    return f"dicom:{dicom_id}" if dicom_id else f"file:{source}"


def _volume_and_group_key(record: Record) -> Tuple[CTVolume, str]:
    """A volume row's one CT volume and its grouping key.

    The manifest's patient_id, else the DICOM series' PatientID (as for slice rows), so that two series
    of one patient stay in one split. A NIfTI file holds no patient tag: such a row is its own patient.
    """
    if record.path.lower().endswith(".zip"):
        with extracted_zip(record.path) as folder:  # extracted once, for the pixels and for the header
            return _volume_and_group_key_in(folder, record)
    return _volume_and_group_key_in(record.path, record)


def _volume_and_group_key_in(path: str, record: Record) -> Tuple[CTVolume, str]:
    volume = _only_volume(path)
    if record.patient_id:
        return volume, f"manifest:{record.patient_id}"
    header = _series_header(path, volume.key) if os.path.isdir(path) else None
    return volume, dicom_group_key(header, record.source) if header is not None else f"file:{record.source}"


def _series_header(folder: str, key: str):
    """The header of a file of the series whose `CTVolume.key` is `key`, in `folder`; None if none is found.

    The volume keeps no patient tag (by design), so its patient is read back from one of its files:
    usually the first file read matches. The series UID stands in as `read_ct_volumes` grouping does it.
    """
    for path in find_files([folder]):
        if is_volume_file(path):
            continue
        try:
            header = read_dicom(path, stop_before_pixels=True)
        except ValueError:
            continue  # not DICOM or damaged: `read_ct_volumes` set it aside too
        uid = str(header.get("SeriesInstanceUID", "") or f"no SeriesInstanceUID: {path}")
        if series_key(uid) == key:
            return header
    return None


def _volume_masks(record: Record, volume: CTVolume) -> np.ndarray:
    """A volume row's NIfTI mask -> bool `(slices, rows, columns)`; refused unless on the volume's grid."""
    try:
        mask_volume = _only_volume(record.mask_path)
    except ValueError as error:
        raise ValueError(f"mask {os.path.basename(record.mask_path)}: {error}") from None
    if mask_volume.hu.shape != volume.hu.shape or not np.allclose(mask_volume.spacing_mm, volume.spacing_mm,
                                                                  rtol=MASK_SPACING_RTOL):
        raise ValueError(f"the mask's grid {mask_volume.hu.shape} at {_mm(mask_volume.spacing_mm)} mm differs "
                         f"from the volume's {volume.hu.shape} at {_mm(volume.spacing_mm)} mm")
    # Same shape and spacing say nothing of where the mask lies: an origin elsewhere along z would label
    # other slices than the ones drawn on. Both positions are patient z (LPS), in display order.
    apart = float(np.max(np.abs(mask_volume.positions_mm - volume.positions_mm)))
    if apart > MASK_POSITION_TOLERANCE_SLICES * volume.spacing_mm[0]:
        raise ValueError(f"the mask's slices lie at z {_z_range(mask_volume)} mm, the volume's at "
                         f"{_z_range(volume)} mm (up to {apart:.3g} mm apart, more than "
                         f"{MASK_POSITION_TOLERANCE_SLICES:g} slice)")
    return mask_volume.hu > 0.5


def _z_range(volume: CTVolume) -> str:
    return f"{volume.positions_mm[0]:.4g} to {volume.positions_mm[-1]:.4g}"


def _mm(spacing) -> str:
    return "x".join(f"{value:.3g}" for value in spacing)


def _only_volume(path: str):
    """The one CT volume at `path`; several series in one folder or zip are refused (one row, one series)."""
    volumes = read_ct_volumes(path)
    if len(volumes) > 1:
        raise ValueError(f"{len(volumes)} CT series in it; give each series (its own folder) its own row")
    return volumes[0]


def window_in_place(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """`apply_window` without its temporaries: `hu` (`float32`, any shape) becomes the window in [0, 1]."""
    hu -= center - width / 2.0
    hu /= width
    return np.clip(hu, 0.0, 1.0, out=hu)


def model_input(unit: np.ndarray, spacing, processor: CTImageProcessor) -> np.ndarray:
    """A windowed slice `(h, w)` with its `(row, column)` spacing in mm (or None) -> `float32` `(size, size)`,
    as `processor` makes it (`CTImageProcessor.to_model_grid`): resized whole, or resampled and cropped/padded."""
    return processor.to_model_grid(torch.from_numpy(unit)[None], spacing, do_resize=True)[0].numpy()


def _mask_file_at_size(path: str, native_shape, spacing, processor: CTImageProcessor) -> np.ndarray:
    """A lesion mask image (non-zero = lesion) at the slice's native shape -> uint8 `(size, size)`."""
    if not os.path.isfile(path):
        raise ValueError("missing")
    with Image.open(path) as opened:
        mask = opened.convert("L") if opened.mode != "L" else opened.copy()
    if mask.size[::-1] != tuple(native_shape):
        raise ValueError(f"shape {mask.size[::-1]} differs from the slice's {tuple(native_shape)}")
    if processor.pixel_spacing_mm is None:
        return mask_at_size(mask, processor.size)
    return _mask_array_at_size(np.asarray(mask) > 0, spacing, processor)


def _mask_array_at_size(mask: np.ndarray, spacing, processor: CTImageProcessor) -> np.ndarray:
    """A boolean mask `(h, w)` on the slice's grid -> uint8 `(size, size)` on the model input's grid."""
    if processor.pixel_spacing_mm is None:
        return mask_at_size(Image.fromarray(mask.astype(np.uint8) * 255), processor.size)
    resampled = processor.to_model_grid(torch.from_numpy(mask.astype(np.float32))[None], spacing, fill=0.0)
    return (resampled[0].numpy() >= 0.5).astype(np.uint8)


def mask_at_size(mask: Image.Image, size: int) -> np.ndarray:
    """A binary mask image (mode "L", 0 or 255) -> uint8 `(size, size)`, 1 on the lesion.

    An antialiased (area-weighted) bilinear resize then a half threshold, so small lesions keep their
    place. Only the lesion's neighbourhood is resized: PIL centres output pixel j of a `box` resize at
    box_left + (j + 0.5) * scale, so a box on the output grid gives the full resize's values there (up
    to rounding, which can flip a pixel that sits exactly on the threshold).
    """
    out = np.zeros((size, size), np.uint8)
    bbox = mask.getbbox()
    if bbox is None:
        return out
    scale_x, scale_y = mask.size[0] / size, mask.size[1] / size
    margin = 2  # output pixels beyond the bilinear support, which reach no lesion pixel
    x0, y0 = max(int(bbox[0] / scale_x) - margin, 0), max(int(bbox[1] / scale_y) - margin, 0)
    x1 = min(int(np.ceil(bbox[2] / scale_x)) + margin, size)
    y1 = min(int(np.ceil(bbox[3] / scale_y)) + margin, size)
    part = mask.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR,
                       box=(x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y))
    out[y0:y1, x0:x1] = np.asarray(part) >= 128
    return out


def _write_png(index: int, stem: str, label: int, unit: np.ndarray) -> Optional[str]:
    """With --png-dir: the windowed slice at native size as a 16-bit PNG (read back as [0, 1]); its path."""
    png_dir = _READER["png_dir"]
    if not png_dir:
        return None
    relative = os.path.join(CLASS_NAMES[label], f"{index:05d}_{stem}.png")
    Image.fromarray(np.round(unit * np.iinfo(np.uint16).max).astype(np.uint16)).save(os.path.join(png_dir, relative))
    return relative


def _read_worker(job) -> list:
    return _read_record(*job)


def read_all(records: List[Record], processor: CTImageProcessor, png_dir, num_workers: int):
    """Read every record (in `num_workers` processes) -> (slices, bad files as (path, reason))."""
    if png_dir:
        for name in CLASS_NAMES:
            os.makedirs(os.path.join(png_dir, name), exist_ok=True)
    jobs = [(record, index) for index, record in enumerate(records)]
    bar = dict(total=len(jobs), desc="reading", unit="file")
    if num_workers <= 1:
        threads = torch.get_num_threads()
        _init_reader(processor, png_dir)
        try:
            results = [_read_worker(job) for job in tqdm(jobs, **bar)]
        finally:
            torch.set_num_threads(threads)
    else:
        with ProcessPoolExecutor(num_workers, initializer=_init_reader, initargs=(processor, png_dir)) as pool:
            results = list(tqdm(pool.map(_read_worker, jobs, chunksize=READER_CHUNK), **bar))
    flat = [item for result in results for item in result]
    slices = [item for item in flat if isinstance(item, Slice)]
    bad = [item for item in flat if not isinstance(item, Slice)]
    return slices, bad


def pseudonym(group_key: str, salt: str) -> str:
    """Manifest IDs are kept (the user chose them); IDs read from DICOM become a salted hash."""
    if group_key.startswith("manifest:"):
        return group_key[len("manifest:"):]
    return "P-" + hashlib.sha256(f"{salt}:{group_key}".encode()).hexdigest()[:PSEUDONYM_HEX_DIGITS]


def split_patients(slices: List[Slice], seed: int) -> Dict[str, List[Slice]]:
    """Stratified (label) and grouped (patient) 4:1:1 split; asserts that no patient is in two splits."""
    groups = sorted({s.group_key for s in slices})
    if len(groups) < N_FOLDS:
        raise ValueError(
            f"a split would be empty: {len(groups)} patient(s) found, at least {N_FOLDS} are needed "
            f"({N_FOLDS} or more per class so that every split holds both classes)"
        )
    group_index = {key: i for i, key in enumerate(groups)}
    labels = np.array([s.record.label for s in slices])
    group_ids = np.array([group_index[s.group_key] for s in slices])
    folds = list(StratifiedGroupKFold(N_FOLDS, shuffle=True, random_state=seed).split(labels, labels, group_ids))
    fold_of = np.empty(len(slices), int)
    for fold, (_, test_index) in enumerate(folds):
        fold_of[test_index] = fold
    split_of_fold = {0: "test", 1: "validation"}
    splits = {name: [] for name in SPLITS}
    for item, fold in zip(slices, fold_of, strict=True):
        splits[split_of_fold.get(fold, "train")].append(item)
    for name, members in splits.items():
        if not members:
            raise ValueError(f"the {name} split would be empty; add patients (at least {N_FOLDS} are needed)")
    patients = {name: {s.group_key for s in members} for name, members in splits.items()}
    assert not (patients["train"] & patients["validation"] or patients["train"] & patients["test"]
                or patients["validation"] & patients["test"]), "a patient is in two splits"
    return splits


def mixed_class_patients(slices: List[Slice]) -> Dict[str, Counter]:
    """Grouping keys with slices of both classes -> label counts (kept together, reported)."""
    by_patient = defaultdict(Counter)
    for item in slices:
        by_patient[item.group_key][item.record.label] += 1
    return {key: counts for key, counts in by_patient.items() if len(counts) > 1}


def prepare_dataset(
    input,
    output,
    png_dir=None,
    size: int = 224,
    seed: int = 0,
    window_center: float = 60.0,
    window_width: float = 400.0,
    num_workers: Optional[int] = None,
    id_salt: Optional[str] = None,
    pixel_spacing_mm: Optional[float] = None,
) -> datasets.DatasetDict:
    """Read `input` (class folder tree or CSV manifest), split it and save it to `output`.

    Returns the `DatasetDict`; see the module docstring for what is written. Raises `ValueError`
    when no usable slice is left or a split would be empty.
    """
    input, output = os.fspath(input), os.fspath(output)
    bad: List[Tuple[str, str]] = []
    if os.path.isdir(input):
        records = records_from_folder(input)
        if os.path.isfile(os.path.join(input, "manifest.csv")):
            print(f"note: {input}/manifest.csv exists; pass it as INPUT to use its patient IDs and masks")
    elif os.path.isfile(input):
        records, bad = records_from_manifest(input)
    else:
        raise ValueError(f"input {input} does not exist")
    processor = CTImageProcessor(window_center, window_width, size=size, do_normalize=False,
                                 pixel_spacing_mm=pixel_spacing_mm)
    num_workers = min(num_workers or os.cpu_count() or 1, max(1, len(records) // MIN_RECORDS_PER_READER))
    slices, unreadable = read_all(records, processor, png_dir, num_workers)
    bad += unreadable
    for path, reason in bad:
        print(f"bad file {path}: {reason}")
    if not slices:
        raise ValueError(f"no usable slice in {input} ({len(bad)} bad file(s), listed above)")

    salt = id_salt if id_salt is not None else secrets.token_hex(16)  # never stored: hashes stay one-way
    for key, counts in mixed_class_patients(slices).items():
        print(f"note: patient {pseudonym(key, salt)} has slices in both classes "
              f"({counts[1]} metastatic, {counts[0]} non-metastatic); its slices stay in one split")
    splits = split_patients(slices, seed)

    images = {name: np.stack([s.image for s in members]) for name, members in splits.items()}
    dataset_dict = datasets.DatasetDict({
        name: split_dataset(members, images[name], salt) for name, members in splits.items()
    })
    dataset_dict.save_to_disk(output)

    mean, std = mean_and_std(images["train"])
    info = {
        "window_center": window_center, "window_width": window_width, "size": size, "seed": seed,
        "pixel_spacing_mm": processor.pixel_spacing_mm,
        "image_mean": [mean] * 3, "image_std": [std] * 3,
        "counts": {
            name: {"slices": len(members), "patients": len({s.group_key for s in members}),
                   "positives": sum(s.record.label for s in members)}
            for name, members in splits.items()
        },
        "n_bad_files": len(bad),
    }
    with open(os.path.join(output, "prepare_info.json"), "w") as handle:
        json.dump(info, handle, indent=2)
    with open(os.path.join(output, "bad_files.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "reason"])
        writer.writerows(bad)
    if png_dir:
        _write_png_manifest(png_dir, splits, salt)
    for name, counts in info["counts"].items():
        print(f"{name}: {counts['slices']} slices, {counts['patients']} patients, {counts['positives']} metastatic")
    print(f"saved {output} ({len(bad)} bad file(s), listed in {os.path.join(output, 'bad_files.csv')})")
    return dataset_dict


def mean_and_std(images: np.ndarray) -> Tuple[float, float]:
    """Mean and standard deviation of every pixel of `images` (`float32`, any shape), summed in `float64`.

    Two passes that accumulate in `float64` without making a `float64` copy of the stack, as numpy's
    `std(dtype=float64)` does: that copy is twice the size of the stack.
    """
    flat = images.reshape(-1)
    mean = float(np.add.reduce(flat, dtype=np.float64)) / flat.size
    mean_square = float(np.einsum("i,i->", flat, flat, dtype=np.float64)) / flat.size
    return mean, float(np.sqrt(max(mean_square - mean * mean, 0.0)))


def split_columns(members: List[Slice], images: np.ndarray, salt: str) -> dict:
    """One split's columns, as `datasets.Dataset.from_dict` takes them with `features(size)`: the
    `(n, size, size)` stacks of images and masks, lists of the rest."""
    return {
        "image": images,
        "label": [s.record.label for s in members],
        "patient_id": [pseudonym(s.group_key, salt) for s in members],
        "source": [s.record.source for s in members],
        "mask": np.stack([s.mask for s in members]),
        "has_mask": [s.has_mask for s in members],
    }


def split_dataset(members: List[Slice], images: np.ndarray, salt: str) -> datasets.Dataset:
    """One split as a `datasets.Dataset` with `features(size)`; `images` is `float32` `(n, size, size)`.

    What `Dataset.from_dict(split_columns(...), features=...)` makes, without its costs: it converts the
    pixels through Python sequences and fingerprints the dataset by pickling and hashing the whole
    table, several times slower and several times the memory (benchmarks/ingest.py measures both).
    Here the Arrow table is built around the numpy buffers, with a random fingerprint (what `datasets`
    itself gives a dataset it cannot hash). `datasets.Dataset` refuses a table whose types are not
    the features'; tests/test_prepare.py checks that the two tables are equal.
    """
    split_features = features(images.shape[-1])
    types = {field.name: field.type for field in split_features.arrow_schema}
    table = pa.table({
        name: _array2d(value, types[name]) if isinstance(value, np.ndarray) else pa.array(value, types[name])
        for name, value in split_columns(members, images, salt).items()
    })
    info = datasets.DatasetInfo(features=split_features)
    return datasets.Dataset(table, info=info, fingerprint=secrets.token_hex(8))  # 64 bits, as datasets' own


def _array2d(stack: np.ndarray, array_type: pa.ExtensionType, chunk: int = 1000) -> pa.ChunkedArray:
    """`(n, rows, columns)` numpy -> a column of `array_type` (`datasets.Array2D`'s Arrow type), zero-copy.

    The storage is lists (slices) of lists (rows) of values. In chunks of `chunk` slices, so that the
    32-bit list offsets hold even 512 px slices.
    """
    n, rows, columns = stack.shape
    chunks = []
    for start in range(0, max(n, 1), chunk):
        part = np.ascontiguousarray(stack[start:start + chunk])
        count = len(part)
        row_offsets = pa.array(np.arange(0, count * rows * columns + 1, columns, dtype=np.int32))
        row_lists = pa.ListArray.from_arrays(row_offsets, pa.array(part.reshape(-1)))
        slice_offsets = pa.array(np.arange(0, count * rows + 1, rows, dtype=np.int32))
        chunks.append(pa.ExtensionArray.from_storage(array_type, pa.ListArray.from_arrays(slice_offsets, row_lists)))
    return pa.chunked_array(chunks, type=array_type)


def _write_png_manifest(png_dir: str, splits: Dict[str, List[Slice]], salt: str) -> None:
    """`png_dir/manifest.csv`, so the PNGs can be prepared again with the same patients and splits."""
    with open(os.path.join(png_dir, "manifest.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id", "split"])
        for split, members in splits.items():
            for item in members:
                writer.writerow([item.png_path, CLASS_NAMES[item.record.label], pseudonym(item.group_key, salt), split])


def main(argv=None) -> datasets.DatasetDict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="class folder tree or CSV manifest")
    parser.add_argument("--output", required=True, help="output folder for the DatasetDict")
    parser.add_argument("--png-dir", help="also write the windowed slices as PNG here")
    parser.add_argument("--size", type=int, default=224, help="model input size (default 224)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window-center", type=float, default=60.0)
    parser.add_argument("--window-width", type=float, default=400.0)
    parser.add_argument("--pixel-spacing-mm", type=float, default=None,
                        help="resample every slice to this spacing and crop/pad it to --size (default: resize whole)")
    parser.add_argument("--num-workers", type=int, default=None, help="reader processes (default: all cores)")
    args = parser.parse_args(argv)
    try:
        return prepare_dataset(args.input, args.output, args.png_dir, args.size, args.seed,
                               args.window_center, args.window_width, args.num_workers,
                               pixel_spacing_mm=args.pixel_spacing_mm)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")


if __name__ == "__main__":
    main()
