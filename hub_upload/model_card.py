"""The model card: YAML metadata (with a model-index of the evaluation) and the README body.

Built with huggingface_hub's `ModelCardData` / `EvalResult` and a Jinja template
(`model_card_template.md`). Everything on it comes from the model folder, metrics.json, the
processor config and the run's settings: numbers and names of settings, never data paths or
patient identifiers.
"""

import math
import re
from pathlib import Path
from typing import Optional

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from modeling.explain import gradcam_contents
from training.paper import PAPER_TITLE, paper_table_rows

from .provenance import TrainingProvenance

TEMPLATE = Path(__file__).with_name("model_card_template.md")
TAGS = ["medical-imaging", "ct", "pdac", "pancreatic-cancer", "lymph-node", "grad-cam", "attention", "resnet", "timm"]
# (metrics.json key, label on the card, model-index metric type: the Hub's metric ids where one exists)
METRICS = (
    ("accuracy", "Accuracy", "accuracy"),
    ("precision", "Precision", "precision"),
    ("recall", "Recall (sensitivity)", "recall"),
    ("specificity", "Specificity", "specificity"),
    ("f1", "F1", "f1"),
    ("auc_roc", "AUC-ROC", "roc_auc"),
)
# The card's `metrics:` list takes Hub metric ids; specificity has none and stays in the model-index only.
HUB_METRIC_IDS = ("accuracy", "precision", "recall", "f1", "roc_auc")
LOCALISATION_METRICS = (("pointing_game", "Pointing game"), ("energy_in_mask", "Energy in mask"))
ATTENTION_TEXT = {
    "dual": "channel (squeeze-and-excitation) and spatial (CBAM-style) attention, summed",
    "channel": "channel attention only (squeeze-and-excitation)",
    "spatial": "spatial attention only (CBAM-style)",
    "none": "none (plain backbone baseline)",
}


# The maps a model can explain itself with: (key in config.json's `localisation`, name on the card).
EXPLANATION_MAPS = (("attention", "Spatial attention"), ("gradcam", "Grad-CAM"))
SPATIAL_ATTENTION_MODES = ("dual", "spatial")


def is_number(value) -> bool:
    """False for the None (or NaN) that evaluate writes where a metric is undefined, e.g. precision
    when nothing was called metastatic."""
    return isinstance(value, (int, float)) and not math.isnan(value)


def format_value(key: str, value) -> str:
    """AUC as a fraction, everything else as a percentage, as the paper reports them."""
    if not is_number(value):
        return "undefined"
    return f"{value:.3f}" if key == "auc_roc" else f"{100 * value:.1f} %"


def format_interval(key: str, metric: dict) -> str:
    """`{"value", "ci_low", "ci_high"}` -> "87.3 % (80.1 % to 93.0 %)"."""
    if not is_number(metric["value"]):
        return "undefined"
    return (
        f"{format_value(key, metric['value'])} "
        f"({format_value(key, metric['ci_low'])} to {format_value(key, metric['ci_high'])})"
    )


def metric_rows(block: dict) -> list:
    """Rows `{"label", "text"}` for the six headline metrics of one metrics.json block."""
    return [{"label": label, "text": format_interval(key, block[key])} for key, label, _ in METRICS if key in block]


def localisation_rows(localisation: Optional[dict]) -> list:
    """Rows `{"method", "label", "text"}` (fractions in [0, 1]) for attention and Grad-CAM maps."""
    rows = []
    for method, name in (("attention", "spatial attention"), ("gradcam", "Grad-CAM")):
        for key, label in LOCALISATION_METRICS:
            metric = ((localisation or {}).get(method) or {}).get(key)
            if metric:
                text = "undefined"
                if is_number(metric["value"]):
                    text = f"{metric['value']:.3f} ({interval_text(metric, ' to ')})"
                rows.append({"method": name, "label": label, "text": text})
    return rows


def percent(value) -> str:
    return f"{100 * value:.0f} %" if is_number(value) else "undefined"


def map_caption(measured: Optional[dict]) -> str:
    """One map's measured localisation (an entry of config.json's `localisation`) as a sentence.

    `measured`: `{"pointing_game", "pointing_game_ci": [low, high], "energy_in_mask", "n_slices",
    "chance", "split"}`; None when the map was never evaluated against lesion masks.
    """
    if not measured:
        return ("never evaluated against lesion masks: it shows what the model weighted, "
                "not where a lesion is")
    low, high = measured.get("pointing_game_ci") or (None, None)
    chance = measured.get("chance")
    return (
        f"on its evaluation ({measured.get('split', 'test')} split), its peak fell on the lesion in "
        f"{percent(measured.get('pointing_game'))} of {measured.get('n_slices', '?')} metastatic slices "
        f"(95 % CI {percent(low)} to {percent(high)}; a random point: "
        f"{f'{100 * chance:.1f} %' if is_number(chance) else 'undefined'}), "
        f"with {percent(measured.get('energy_in_mask'))} of its energy inside the lesion"
    )


def map_captions(config: dict) -> list:
    """Rows `{"name", "text"}`: what each explanation map of this model was measured to point at."""
    measured = config.get("localisation") or {}
    rows = []
    stage = config.get("gradcam_stage", 4)
    for key, name in EXPLANATION_MAPS:
        if key == "attention" and config.get("attention") not in SPATIAL_ATTENTION_MODES:
            rows.append({"name": name, "text": "none: this model has no spatial attention branch"})
        elif key == "gradcam":
            entry = measured.get(key)
            same_stage = entry is not None and entry.get("stage", 4) == stage
            contents = gradcam_contents(stage, config.get("spatial_attention_stages", [4]), config.get("attention"))
            rows.append({"name": f"{name} (backbone stage {stage}{', the last' if stage == 4 else ''})",
                         "text": f"{map_caption(entry if same_stage else None)}. {contents}"})
        else:
            rows.append({"name": name, "text": map_caption(measured.get(key))})
    return rows


def threshold_text(threshold) -> str:
    """Enough decimals that a threshold near 0 or 1 does not print as 0 or 1: 0.99963 -> "0.9996"."""
    if not is_number(threshold):
        return "undefined"
    decimals = 4
    while decimals < 8 and 0 < threshold < 1 and round(threshold, decimals) in (0.0, 1.0):
        decimals += 1
    return f"{threshold:.{decimals}f}"


def interval_text(metric: dict, separator: str = "-") -> str:
    """The 95 % interval of a fraction, "0.700-0.850"."""
    low, high = metric["ci_low"], metric["ci_high"]
    return f"{low:.3f}{separator}{high:.3f}" if is_number(low) and is_number(high) else "undefined"


def eval_results(metrics: dict, synthetic: bool) -> list:
    """model-index entries: slice- and patient-level metrics with their 95 % intervals in `args`.

    The interval goes in `args` (machine-readable) and in the name (shown by the Hub's widget);
    `config` says which level the metric was computed at.
    """
    if synthetic:
        dataset = {"dataset_type": "synthetic-ct-phantom", "dataset_name": "Synthetic CT phantom (training.phantom)"}
    else:
        dataset = {"dataset_type": "pdac-ln-ct-slices", "dataset_name": "PDAC lymph-node CT slices (private)"}
    bootstrap = metrics.get("bootstrap", {})
    results = []
    for level, block in (("slice-level", metrics), ("patient-level", metrics.get("patient_level") or {})):
        for key, label, metric_type in METRICS:
            if key not in block:
                continue
            metric = block[key]
            if not is_number(metric["value"]):
                continue  # the model-index holds numbers only; the card's table says "undefined"
            results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Lymph-node metastasis detection (binary)",
                    dataset_split=metrics.get("split", "test"),
                    metric_type=metric_type,
                    metric_value=metric["value"],
                    metric_name=f"{label}, {level} (95% CI {interval_text(metric)})",
                    metric_config=level,
                    metric_args={
                        "threshold": metrics["threshold"],
                        "ci_low": metric["ci_low"],
                        "ci_high": metric["ci_high"],
                        "confidence_level": 0.95,
                        "bootstrap_resamples": bootstrap.get("resamples"),
                        "bootstrap_unit": bootstrap.get("unit"),
                    },
                    **dataset,
                )
            )
    return results


def count_parameters(weights: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(weights), framework="np") as tensors:
        for name in tensors.keys():
            count = 1
            for dim in tensors.get_slice(name).get_shape():
                count *= dim
            total += count
    return total


def build_model_card(
    *,
    config: dict,
    processor: dict,
    metrics: Optional[dict],
    provenance: TrainingProvenance,
    weights: Path,
    figures: list,
    repo_id: str,
    revision: Optional[str],
    space_id: Optional[str],
    license: str,
) -> ModelCard:
    """The model repo's README.md as a `ModelCard` (metadata + body)."""
    model_name = repo_id.split("/")[-1]
    tags = TAGS + (["synthetic-data"] if provenance.synthetic else [])
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        license=license,
        tags=tags,
        metrics=[metric_type for _, _, metric_type in METRICS if metric_type in HUB_METRIC_IDS],
        model_name=model_name,
        eval_results=eval_results(metrics, provenance.synthetic) if metrics else None,
    )
    center, width = processor["window_center"], processor["window_width"]
    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE.read_text(),
        model_name=model_name,
        repo_id=repo_id,
        revision=revision or "main",
        revision_pinned=bool(revision and re.fullmatch(r"[0-9a-f]{40}", revision)),
        space_id=space_id,
        synthetic=provenance.synthetic,
        counts=provenance.counts,
        settings=provenance.settings,
        config=config,
        attention_text=ATTENTION_TEXT.get(config["attention"], config["attention"]),
        n_parameters=f"{count_parameters(weights) / 1e6:.1f} M",
        window_low=center - width / 2,
        window_high=center + width / 2,
        processor=processor,
        metrics=metrics,
        slice_rows=metric_rows(metrics) if metrics else [],
        at_half_rows=metric_rows(metrics.get("at_0.5") or {}) if metrics else [],
        patient_rows=metric_rows(metrics.get("patient_level") or {}) if metrics else [],
        localisation_rows=localisation_rows(metrics.get("localisation")) if metrics else [],
        figures=figures,
        map_captions=map_captions(config),
        decision_threshold=threshold_text(config.get("decision_threshold")),
        paper_title=PAPER_TITLE,
        paper_rows=paper_table_rows(),
    )
