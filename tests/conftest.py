"""Shared fixtures. Nothing here touches the network: tiny random models, synthetic DICOMs."""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.serving import serve_demo
from modeling import (
    CLASS_NAMES,
    CTImageProcessor,
    DualAttentionResNetConfig,
    DualAttentionResNetForImageClassification,
)

TINY_BACKBONE = "resnet10t"
FUZZ_PATIENT = "ROE^FUZZ-4242"  # name and ID of the fuzzed files' patient: must never be echoed
TINY_SIZE = 64


def tiny_model(**config_overrides) -> DualAttentionResNetForImageClassification:
    """A random resnet10t dual-attention model, seeded, in eval mode."""
    torch.manual_seed(0)
    config = DualAttentionResNetConfig(backbone=TINY_BACKBONE, image_size=TINY_SIZE, **config_overrides)
    return DualAttentionResNetForImageClassification(config).eval()


# resnet10t reduces by 32: a 128 px input gives a 4 x 4 last-stage map, each cell 32 x 32 pixels.
GATED_SIZE, GATED_GRID = 128, 4


class RegionGate(nn.Module):
    """Zeroes a `(batch, channels, grid, grid)` feature map outside one cell `(row, col)`."""

    def __init__(self, grid: int, cell):
        super().__init__()
        gate = torch.zeros(1, 1, grid, grid)
        gate[..., cell[0], cell[1]] = 1.0
        self.register_buffer("gate", gate)

    def forward(self, x):
        return x * self.gate


def region_gated_model(cell, attention="dual"):
    """A tiny model whose logit depends only on the image region under last-stage cell `cell`.

    The gate sits inside `layer4`, the Grad-CAM layer, so the explained activations are zero elsewhere;
    classifier weights are made positive so the cell's weighted activations are positive, not clipped.
    """
    model = tiny_model(attention=attention)
    backbone = model.dual_attention_resnet.backbone
    backbone.layer4 = nn.Sequential(backbone.layer4, RegionGate(GATED_GRID, cell))
    model.classifier.weight.data.abs_()
    return model


def structured_pixels(batch=2, size=TINY_SIZE, seed=0):
    """Phantom-like normalised slices: a body ellipse, an organ and a bright node at random places, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    slices = []
    for _ in range(batch):
        image = np.where(((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.48) ** 2 <= 1, 0.45, 0.0)
        for radius, value in ((0.12, 0.7), (0.05, 0.95)):
            cy, cx = rng.uniform(0.3, 0.7, 2)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = value
        slices.append(image + rng.normal(0, 0.03, image.shape))
    unit = torch.tensor(np.stack(slices), dtype=torch.float32)[:, None].expand(-1, 3, -1, -1)
    return (unit - 0.3) / 0.25


@pytest.fixture(scope="session", autouse=True)
def session_tempdir(tmp_path_factory):
    """In-process temporary files go under pytest's folder: gradio_client leaves an empty folder in the
    temp dir for every file it downloads, and the suite should not litter /tmp."""
    tempfile.tempdir = str(tmp_path_factory.mktemp("tempdir"))
    yield
    tempfile.tempdir = None


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny model + processor (64 px), as training writes RUN/best/."""
    path = tmp_path_factory.mktemp("tiny_model")
    tiny_model().save_pretrained(path)
    CTImageProcessor(size=TINY_SIZE, image_mean=[0.3] * 3, image_std=[0.25] * 3).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def demo_server(tiny_model_dir, tmp_path_factory):
    """`python space/app.py --model <tiny model>` on a free 127.0.0.1 port, shared by the server and browser tests.

    Yields a `benchmarks.serving.DemoServer`: `url`, `process`, `upload_dir` (its private GRADIO_TEMP_DIR),
    `log` (stdout+stderr).
    """
    folder = tmp_path_factory.mktemp("demo_server")
    with serve_demo(tiny_model_dir, folder / "log.txt", upload_dir=folder / "gradio", timeout_s=180) as server:
        yield server


@pytest.fixture(scope="session")
def fuzzed_dicoms(tmp_path_factory):
    """216 damaged CT DICOMs (`dicom_fuzz`, seed 0) made from three valid slices: unsigned, signed with a
    slope of 0.5, and JPEG 2000 lossless, whose patient is `FUZZ_PATIENT`. Returns `(folder, paths)`."""
    from dicom_fuzz import mutate_ct_dicoms
    from pydicom.uid import JPEG2000Lossless

    from training.dicom_writer import ct_dataset, write_ct_dicom

    folder = tmp_path_factory.mktemp("fuzz")
    yy, xx = np.mgrid[:96, :96]
    hu = np.where((yy - 48) ** 2 + (xx - 48) ** 2 < 40**2, 40.0, -1000.0)
    valid = [write_ct_dicom(folder / "valid_unsigned.dcm", hu, patient_id=FUZZ_PATIENT)]
    valid.append(write_ct_dicom(folder / "valid_signed.dcm", hu, patient_id=FUZZ_PATIENT, signed=True,
                                rescale_slope=0.5, rescale_intercept=0.0))
    compressed = ct_dataset(hu, patient_id=FUZZ_PATIENT)
    compressed.compress(JPEG2000Lossless)
    compressed.save_as(folder / "valid_j2k.dcm", enforce_file_format=True)
    valid.append(folder / "valid_j2k.dcm")
    return folder / "damaged", mutate_ct_dicoms([Path(path) for path in valid], folder / "damaged", seed=0)


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """A small CT phantom: 12 slices per class, 2 per patient (12 patients), 96 px native."""
    from training.phantom import generate_phantom

    path = tmp_path_factory.mktemp("phantom")
    generate_phantom(path, n_per_class=12, seed=0, image_size=96, slices_per_patient=2, progress=False)
    return path


@pytest.fixture(scope="session")
def prepared_dataset(phantom_dir, tmp_path_factory):
    """`phantom_dir` prepared at 64 px from its manifest (masks included); returns the DS path."""
    from training.prepare import prepare_dataset

    path = tmp_path_factory.mktemp("prepared") / "ds"
    prepare_dataset(phantom_dir / "manifest.csv", path, size=TINY_SIZE, seed=0, num_workers=1)
    return path


def write_tiny_prepared(path, size=32, patients=(12, 5, 6), slices_per_patient=2, seed=0):
    """A prepared dataset (training.prepare's schema) without DICOM I/O: positives carry a bright disc.

    `patients` per split (train, validation, test), half of them metastatic (all their slices); the
    validation split has an odd slice count so two processes need a padded last batch.
    """
    import json

    import datasets
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    features = datasets.Features({
        "image": datasets.Array2D((size, size), "float32"),
        "label": datasets.ClassLabel(names=CLASS_NAMES),
        "patient_id": datasets.Value("string"), "source": datasets.Value("string"),
        "mask": datasets.Array2D((size, size), "uint8"), "has_mask": datasets.Value("bool"),
    })
    splits = {}
    for split, n_patients in zip(("train", "validation", "test"), patients, strict=True):
        rows = {name: [] for name in features}
        for p in range(n_patients):
            label = p % 2
            for s in range(slices_per_patient if not (split == "validation" and p == 0) else 1):
                image = rng.uniform(0.1, 0.4, (size, size)).astype(np.float32)
                cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                disc = ((yy - cy) ** 2 + (xx - cx) ** 2) <= (size // 6) ** 2
                if label:
                    image[disc] = 0.9
                rows["image"].append(image)
                rows["label"].append(label)
                rows["patient_id"].append(f"{split}-{p:02d}")
                rows["source"].append(f"{split}/{p:02d}_{s}.dcm")
                rows["mask"].append((disc & bool(label)).astype(np.uint8))
                rows["has_mask"].append(bool(label))
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(path))
    train_images = np.stack(splits["train"]["image"])
    info = {"window_center": 60.0, "window_width": 400.0, "size": size, "seed": seed,
            "image_mean": [float(train_images.mean())] * 3, "image_std": [float(train_images.std())] * 3,
            "counts": {}, "n_bad_files": 0}
    with open(f"{path}/prepare_info.json", "w") as handle:
        json.dump(info, handle)
    return path


@pytest.fixture(scope="session")
def signal_dataset(tmp_path_factory):
    """`write_tiny_prepared` at 32 px: 24 train, 9 validation, 12 test slices; learnable in a few epochs."""
    return write_tiny_prepared(tmp_path_factory.mktemp("signal") / "ds")


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for tiny models: on a shared, oversubscribed CI machine OpenMP threads spin
    and make 32 px steps several times slower, and tiny convolutions gain nothing from two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def user_inputs(work: Path, seed: int):
    """What a user brings to a fresh process: `(hu (96, 96), CT DICOM path, windowed PNG path)` in `work`."""
    from PIL import Image

    from training.dicom_writer import write_ct_dicom

    rng = np.random.default_rng(seed)
    hu = rng.uniform(-300, 400, size=(96, 96)).round()
    dicom_path = write_ct_dicom(work / "slice.dcm", hu)
    png_path = work / "slice.png"
    Image.fromarray(rng.integers(0, 256, size=(80, 80), dtype=np.uint8)).save(png_path)
    return hu, dicom_path, png_path


def load_demo_app(model_dir):
    """space/app.py imported as a module, configured through MODEL_ID as a Space would be."""
    import importlib.util
    import sys

    previous = os.environ.get("MODEL_ID")
    os.environ["MODEL_ID"] = str(model_dir)
    try:
        spec = importlib.util.spec_from_file_location("space_app", Path(__file__).parents[1] / "space" / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["space_app"] = module  # gradio inspects the source of the module's components
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            os.environ.pop("MODEL_ID")
        else:
            os.environ["MODEL_ID"] = previous
    return module


def run_user_script(script_text: str, work: Path, *args) -> dict:
    """Runs `script_text` as a user's script in `work`, in a fresh interpreter that cannot import this
    repository (no PYTHONPATH, cwd outside it) and offline; returns the JSON its last line printed."""
    import json
    import subprocess
    import sys

    script = work / "user.py"
    script.write_text(script_text)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(work / "hf_modules"))
    completed = subprocess.run(
        [sys.executable, str(script), *map(str, args)], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])

