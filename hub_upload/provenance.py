"""What a model was trained on, for the model card: synthetic phantom or real CT, and how much.

Read from the run: RUN/config.yaml (written by training.train) names the prepared dataset, whose
prepare_info.json holds the split counts. Phantom slices are recognised by the phantom's pseudonym
("PHANTOM-000-0007", training/phantom.py), which names its files and, with a manifest, its patients;
the dataset's `source` and `patient_id` columns are compared, never printed or written.

Auto-detection only ever concludes "phantom". A card that says a model was trained on patient data
is a claim the publisher makes with `--trained-on real`.
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

PHANTOM_PATIENT_PREFIX = "PHANTOM-"
TRAINED_ON_CHOICES = ("auto", "phantom", "real")
# Settings worth a line on the card. Anything else in config.yaml (paths above all) stays out.
CARD_SETTINGS = (
    "backbone", "attention", "pretrained_backbone", "frozen_stages", "dropout", "image_size", "augment",
    "epochs", "batch_size", "lr", "weight_decay", "lr_factor", "lr_patience", "early_stopping_patience",
    "seed", "mixed_precision",
)


@dataclass
class TrainingProvenance:
    synthetic: bool
    counts: Optional[dict] = None  # prepare_info["counts"]: {split: {"slices", "patients", "positives"}}
    settings: dict = field(default_factory=dict)  # CARD_SETTINGS found in RUN/config.yaml


def find_run_config(model_dir: Path) -> Optional[Path]:
    """RUN/config.yaml for a model folder RUN/best (or the folder's own config.yaml)."""
    for candidate in (model_dir / "config.yaml", model_dir.parent / "config.yaml"):
        if candidate.is_file():
            return candidate
    return None


def read_run_config(model_dir: Path) -> dict:
    path = find_run_config(model_dir)
    if path is None:
        return {}
    import yaml

    loaded = yaml.safe_load(path.read_text())
    return loaded if isinstance(loaded, dict) else {}


def is_phantom_dataset(data_dir: Path) -> bool:
    """True when every slice of every split comes from a phantom file or patient."""
    import datasets

    dataset_dict = datasets.load_from_disk(str(data_dir))
    return all(
        os.path.basename(str(source)).startswith(PHANTOM_PATIENT_PREFIX)
        or str(patient).startswith(PHANTOM_PATIENT_PREFIX)
        for split in dataset_dict.values()
        for source, patient in zip(split["source"], split["patient_id"], strict=True)
    )


def trained_on_data_dir(run_config: dict, run_config_path: Path) -> Optional[Path]:
    """The prepared dataset a run used: beside the run when the two were copied together
    (`data_relative_to_run`), else the absolute `data` path that training.train stores (older runs
    stored it as given, relative to the directory training was started from)."""
    candidates = []
    if run_config.get("data_relative_to_run"):
        candidates.append(run_config_path.parent / run_config["data_relative_to_run"])
    if run_config.get("data"):
        candidates.append(Path(run_config["data"]))
    return next((path for path in candidates if (path / "prepare_info.json").is_file()), None)


def read_provenance(model_dir, trained_on: str = "auto", data_dir=None) -> TrainingProvenance:
    """Raises ValueError (one line) when `trained_on="auto"` cannot tell phantom from real data."""
    if trained_on not in TRAINED_ON_CHOICES:
        raise ValueError(f"--trained-on must be one of {TRAINED_ON_CHOICES}, got {trained_on!r}")
    model_dir = Path(model_dir)
    run_config = read_run_config(model_dir)
    settings = {
        key: run_config[key] for key in CARD_SETTINGS if isinstance(run_config.get(key), (int, float, str, bool))
    }
    if data_dir is None and run_config:
        data_dir = trained_on_data_dir(run_config, find_run_config(model_dir))
    info_path = Path(data_dir) / "prepare_info.json" if data_dir else None
    counts = None
    if info_path is not None and info_path.is_file():
        counts = json.loads(info_path.read_text()).get("counts")
    if trained_on != "auto":
        return TrainingProvenance(trained_on == "phantom", counts, settings)
    if info_path is None or not info_path.is_file():
        raise ValueError(
            f"cannot tell what {model_dir} was trained on (no prepared dataset found via RUN/config.yaml); "
            "pass --data DS or --trained-on phantom|real"
        )
    if not is_phantom_dataset(Path(data_dir)):
        raise ValueError(
            f"{data_dir} is not (only) the synthetic phantom; pass --trained-on real to publish it as such"
        )
    return TrainingProvenance(True, counts, settings)
