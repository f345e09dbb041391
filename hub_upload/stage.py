"""Staging a trained model folder as the exact file set of its Hub model repo.

What ships: config.json (with `auto_map`), model.safetensors, preprocessor_config.json, the code
files that `auto_map` and `custom_pipelines` need, the evaluation's metrics and aggregate figures,
README.md. The code is, by default, the copy `save_pretrained` wrote next to the weights, so a model
trained last month is published with the code it was trained and evaluated with, not today's
`modeling/` (`code="current"` publishes today's instead).
What never ships: pickle weights, optimizer/accelerate state, predictions.csv and report.md (they
list per-slice sources and patient pseudonyms), per-image overlays (patient images), data paths.
"""

import json
import shutil
from pathlib import Path
from typing import Optional

from .atomic import atomic_directory
from .code_files import MODELING_DIR, auto_map_modules, custom_pipeline_modules, module_closure
from .model_card import METRICS, build_model_card
from .provenance import TrainingProvenance

SAFE_WEIGHTS = "model.safetensors"
PICKLE_WEIGHTS = "pytorch_model.bin"
EVAL_DIR_IN_REPO = "evaluation"
# Aggregate plots only: nothing in them identifies a patient or shows a patient's image.
EVAL_FIGURES = ("roc_curve.png", "confusion_matrix.png", "reliability_diagram.png")
TRAINING_FIGURES = ("loss_curve.png",)
# Where the staged remote code comes from: the model folder (saved with the weights) or modeling/.
CODE_SOURCES = ("saved", "current")


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} is not valid JSON: {path} ({error.msg} at line {error.lineno})") from None


def check_metrics(metrics: dict, path: Path) -> None:
    """One-line refusal of a metrics.json that lacks what the card and model-index report."""
    for key in ("split", "n", "threshold"):
        if key not in metrics:
            raise ValueError(f"{path} lacks {key!r}; is it training.evaluate's metrics.json?")
    for block_name, block in (("", metrics), ("patient_level.", metrics.get("patient_level") or {})):
        for key, _, _ in METRICS:
            metric = block.get(key)
            if block is metrics and metric is None:
                raise ValueError(f"{path} lacks {key!r}")
            if metric is not None and not {"value", "ci_low", "ci_high"} <= set(metric):
                raise ValueError(f"{path}: {block_name}{key} needs value, ci_low and ci_high")


def read_model_folder(model_dir: Path):
    """-> (config dict, processor dict), refusing folders that cannot become a working model repo."""
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder not found: {model_dir}")
    config = read_json(model_dir / "config.json", "config.json")
    if "auto_map" not in config:
        raise ValueError(f"{model_dir}/config.json has no auto_map; save the model with modeling's save_pretrained")
    processor = read_json(model_dir / "preprocessor_config.json", "preprocessor_config.json (the CTImageProcessor)")
    return config, processor


def write_safetensors(model_dir: Path, destination: Path) -> None:
    """Copies model.safetensors; a pickle-only folder is converted, loading tensors only."""
    if (model_dir / SAFE_WEIGHTS).is_file():
        shutil.copyfile(model_dir / SAFE_WEIGHTS, destination)
        return
    if not (model_dir / PICKLE_WEIGHTS).is_file():
        raise FileNotFoundError(f"no {SAFE_WEIGHTS} (or {PICKLE_WEIGHTS} to convert) in {model_dir}")
    import torch
    from safetensors.torch import save_file

    # weights_only refuses pickled code, so converting an untrusted file cannot run it.
    try:
        state_dict = torch.load(model_dir / PICKLE_WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle and torch raise many types
        raise ValueError(
            f"{model_dir / PICKLE_WEIGHTS} is not plain tensors ({type(error).__name__}); "
            "re-save the model with save_pretrained (safetensors)"
        ) from None
    # clone: safetensors refuses tensors that share storage
    save_file({name: tensor.clone().contiguous() for name, tensor in state_dict.items()}, destination,
              metadata={"format": "pt"})


def code_files_for(config: dict, processor: dict, code_dir: Path = MODELING_DIR) -> list:
    """File names in `code_dir` that the auto_map and custom_pipelines entries import, directly or relatively."""
    modules = (
        auto_map_modules(config["auto_map"])
        | auto_map_modules(processor.get("auto_map", {}))
        | custom_pipeline_modules(config.get("custom_pipelines") or {})
    )
    return [f"{name}.py" for name in module_closure(modules, code_dir)]


def code_dir_for(model_dir: Path, code: str) -> Path:
    if code not in CODE_SOURCES:
        raise ValueError(f"`code` must be one of {CODE_SOURCES}, got {code!r}")
    return model_dir if code == "saved" else MODELING_DIR


def code_differences(model_dir, config: dict, processor: dict) -> list:
    """Code files (of either folder's closure) whose saved copy in `model_dir` differs from `modeling/`'s,
    or exists in only one of them; sorted names."""
    model_dir = Path(model_dir)
    names = set()
    for code_dir in (model_dir, MODELING_DIR):
        try:
            names.update(code_files_for(config, processor, code_dir))
        except FileNotFoundError:
            pass  # a folder without the code: every name of the other folder differs
    return sorted(
        name for name in names
        if not ((model_dir / name).is_file() and (MODELING_DIR / name).is_file()
                and (model_dir / name).read_bytes() == (MODELING_DIR / name).read_bytes())
    )


def stage_model_repo(
    model_dir,
    stage_dir,
    *,
    repo_id: str,
    provenance: TrainingProvenance,
    eval_dir=None,
    revision: Optional[str] = None,
    space_id: Optional[str] = None,
    license: str = "apache-2.0",
    overwrite: bool = False,
    code: str = "saved",
) -> Path:
    """Writes the model repo for `repo_id` to `stage_dir` (all at once) and returns its path.

    `code`: "saved" stages the code files `save_pretrained` wrote into `model_dir`, "current" those of
    today's `modeling/`.
    """
    model_dir = Path(model_dir)
    config, processor = read_model_folder(model_dir)
    code_dir = code_dir_for(model_dir, code)
    try:
        code_files = code_files_for(config, processor, code_dir)
    except FileNotFoundError as error:
        if code != "saved":
            raise
        raise FileNotFoundError(
            f"{model_dir} lacks the code saved with its weights ({error}); "
            "pass --code current to publish today's modeling/"
        ) from None
    metrics = None
    if eval_dir is not None:
        metrics = read_json(Path(eval_dir) / "metrics.json", "metrics.json")
        check_metrics(metrics, Path(eval_dir) / "metrics.json")
    # RUN/loss_curve.png belongs to RUN/best only when the parent is a training run (history.json).
    run_dir = model_dir.parent if (model_dir.parent / "history.json").is_file() else None
    figure_sources = ([run_dir / name for name in TRAINING_FIGURES] if run_dir else []) + (
        [Path(eval_dir) / name for name in EVAL_FIGURES] if eval_dir else []
    )
    figures = [path for path in figure_sources if path.is_file()]

    with atomic_directory(stage_dir, overwrite=overwrite) as building:
        shutil.copyfile(model_dir / "config.json", building / "config.json")
        shutil.copyfile(model_dir / "preprocessor_config.json", building / "preprocessor_config.json")
        write_safetensors(model_dir, building / SAFE_WEIGHTS)
        for name in code_files:
            shutil.copyfile(code_dir / name, building / name)
        if metrics is not None or figures:
            (building / EVAL_DIR_IN_REPO).mkdir()
        if metrics is not None:
            shutil.copyfile(Path(eval_dir) / "metrics.json", building / EVAL_DIR_IN_REPO / "metrics.json")
        for path in figures:
            shutil.copyfile(path, building / EVAL_DIR_IN_REPO / path.name)
        card = build_model_card(
            config=config,
            processor=processor,
            metrics=metrics,
            provenance=provenance,
            weights=building / SAFE_WEIGHTS,
            figures=[f"{EVAL_DIR_IN_REPO}/{path.name}" for path in figures],
            repo_id=repo_id,
            revision=revision,
            space_id=space_id,
            license=license,
        )
        card.save(building / "README.md")
    return Path(stage_dir).resolve()
