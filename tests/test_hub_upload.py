"""hub_upload: the staged model repo and Space are what users get from the Hub; the push fails cleanly offline.

Nothing here reaches the network: loading runs on staged folders, pushes go to a closed local port
or to a recording stand-in for `HfApi`.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import TINY_SIZE, tiny_model, write_tiny_prepared
from huggingface_hub import ModelCard, SpaceCard, metadata_load
from PIL import Image

from benchmarks.serving import free_port
from hub_upload import TrainingProvenance, read_provenance, stage_model_repo, stage_space
from hub_upload import push as push_module
from hub_upload.__main__ import main
from hub_upload.code_files import MODELING_DIR
from hub_upload.space import SPACE_DIR
from modeling import CTImageProcessor
from training.dicom_writer import write_ct_dicom

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdefXYZ"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
PHANTOM = TrainingProvenance(synthetic=True, counts={"train": {"slices": 8, "patients": 4, "positives": 4}})


def interval(value, low, high):
    return {"value": value, "ci_low": low, "ci_high": high}


def six_metrics(offset):
    """Distinct made-up numbers per level, so a mix-up between levels shows."""
    return {
        "accuracy": interval(0.81 + offset, 0.70 + offset, 0.90 + offset),
        "precision": interval(0.78 + offset, 0.64 + offset, 0.89 + offset),
        "recall": interval(0.93 + offset, 0.85 + offset, 0.99),
        "specificity": interval(0.69 + offset, 0.55 + offset, 0.82 + offset),
        "f1": interval(0.85 + offset, 0.76 + offset, 0.92 + offset),
        "auc_roc": interval(0.91 + offset, 0.84 + offset, 0.97),
    }


def write_eval(folder: Path) -> dict:
    """An EVAL folder as training.evaluate writes it (metrics.json schema, figures, per-slice files)."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {
        "split": "test", "n": 12, "n_patients": 6, "threshold": 0.5,
        "operating_point": {"threshold": 0.5, "target_sensitivity": 0.95, "chosen_on": "validation"},
        **six_metrics(0.0), "confusion_matrix": [[4, 2], [1, 5]],
        "at_0.5": {"threshold": 0.5, **six_metrics(-0.02), "confusion_matrix": [[4, 2], [1, 5]]},
        # undefined metrics are written as null (precision when no patient was called metastatic)
        "patient_level": {"n": 6, **six_metrics(0.01), "precision": {"value": None, "ci_low": None, "ci_high": None}},
        "calibration": {"ece": 0.083, "brier": 0.171},
        "localisation": {
            "n": 5, "attention": None,
            "gradcam": {"pointing_game": interval(0.8, 0.4, 1.0), "energy_in_mask": interval(0.35, 0.2, 0.5)},
        },
        "bootstrap": {"resamples": 1000, "seed": 0, "unit": "patient"},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    for name in ("roc_curve.png", "confusion_matrix.png", "reliability_diagram.png"):
        Image.new("RGB", (8, 8), "white").save(folder / name)
    # per-slice outputs name sources and patients: they must never be staged
    (folder / "predictions.csv").write_text("source,patient_id,probability\nscan.dcm,PHANTOM-000-0001,0.7\n")
    (folder / "report.md").write_text("# report\n")
    return metrics


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    write_eval(folder)
    return folder


@pytest.fixture(scope="module")
def staged(tiny_model_dir, eval_dir, tmp_path_factory):
    """The model repo staged from the tiny model + EVAL, as the CLI's --dry-run writes it."""
    out = tmp_path_factory.mktemp("stage") / "out"
    argv = ["--model", str(tiny_model_dir), "--eval", str(eval_dir), "--repo-id", "me/pdac-ln",
            "--dry-run", "--stage-dir", str(out), "--trained-on", "phantom"]
    assert main(argv) == 0
    return out


def copy_model_folder(model_dir: Path, destination: Path, weights: bool = True) -> Path:
    """A copy of a saved model folder (configs and the code saved with it), with or without its weights."""
    ignore = shutil.ignore_patterns("*.safetensors") if not weights else None
    shutil.copytree(model_dir, destination, ignore=ignore)
    return destination


def files_under(folder: Path) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def run_cli(args, env_overrides, cwd):
    """`python -m hub_upload ARGS` in a fresh process, with HF_HOME isolated (no saved login)."""
    env = {key: value for key, value in os.environ.items() if key not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update({"HF_HOME": str(cwd / "hf_home"), "PYTHONPATH": str(REPO_ROOT), **env_overrides})
    return subprocess.run([sys.executable, "-m", "hub_upload", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


# --- the staged model repo -------------------------------------------------------------------------------------


def test_staged_repo_holds_exactly_the_hub_files(staged):
    files = files_under(staged)
    required = {
        "config.json", "model.safetensors", "preprocessor_config.json", "README.md",
        "configuration_dual_attention_resnet.py", "modeling_dual_attention_resnet.py", "image_processing_ct.py",
        # imported relatively by the auto_map files
        "attention.py", "backbone_stages.py", "ct_dicom.py", "dicom_vocabulary.py",
        "pipeline_ct_classification.py",  # config.json's custom_pipelines (the DICOM pipeline)
        "evaluation/metrics.json", "evaluation/roc_curve.png", "evaluation/confusion_matrix.png",
        "evaluation/reliability_diagram.png",
    }
    assert required <= files
    # code the model does not run, per-slice outputs, and anything pickled stay out
    assert not files & {"__init__.py", "explain.py", "predict.py", "evaluation/predictions.csv", "evaluation/report.md"}
    assert not [name for name in files if name.endswith(PICKLE_SUFFIXES)]
    extra_code = {name for name in files if name.endswith(".py")} - required
    assert not extra_code, f"staged modules nobody imports: {extra_code}"
    assert not list(staged.parent.glob(".out.*")), "temporary staging folders left behind"
    config = json.loads((staged / "config.json").read_text())
    assert set(config["auto_map"]) == {
        "AutoConfig", "AutoModel", "AutoModelForImageClassification", "AutoImageProcessor"}


# Run in one fresh interpreter (torch + transformers + gradio imports dominate the cost): first the
# staged model repo through every Auto class and the pipeline, checked to import nothing of this
# repository; then, like a Space does, the staged Space's app.py with MODEL_ID set to that repo.
FRESH_PROCESS_SCRIPT = r"""
import json, os, sys
import numpy as np, torch
from PIL import Image
from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline)

repo, hu_path, space = sys.argv[1:4]
hu = np.load(hu_path)
config = AutoConfig.from_pretrained(repo, trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained(repo, trust_remote_code=True)
model = AutoModelForImageClassification.from_pretrained(repo, trust_remote_code=True).eval()
base = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
pixel_values = processor(hu, return_tensors="pt")["pixel_values"]
with torch.no_grad():
    logits = model(pixel_values).logits
    pooled = base(pixel_values).pooler_output
unit = (np.clip((hu + 140.0) / 400.0, 0, 1) * 255).round().astype(np.uint8)
score = pipeline("image-classification", model=repo, trust_remote_code=True)(Image.fromarray(unit))[0]
with torch.no_grad():
    png_logit = model(processor(Image.fromarray(unit), return_tensors="pt")["pixel_values"]).logits
report = {
    "classes": [type(config).__name__, type(processor).__name__, type(model).__name__, type(base).__name__],
    "class_modules": [type(model).__module__],
    "this_repo_imported": sorted(m for m in sys.modules if m.split(".")[0] in ("modeling", "hub_upload", "training")),
    "logits": logits.tolist(), "pooled_shape": list(pooled.shape),
    "pipeline": score, "png_probability": torch.sigmoid(png_logit)[0, 0].item(),
}
os.environ["MODEL_ID"] = repo  # what the push sets as a Space variable
os.chdir(space)
sys.path.insert(0, space)  # as `python app.py` in the Space's folder
import app
report["space"] = {"modeling": sys.modules["modeling"].__file__, "model": app._source,
                   "served": type(app.demo).__name__}
print(json.dumps(report))
"""
HU_SLICE = np.random.default_rng(0).uniform(-300, 400, size=(80, 80)).astype(np.float32)


@pytest.fixture(scope="module")
def staged_space(tmp_path_factory):
    """(path, files as staged): running app.py later adds files of its own (Gradio writes app.pyi)."""
    path = stage_space(tmp_path_factory.mktemp("space_stage") / "space", model_id="me/pdac-ln")
    return path, files_under(path)


@pytest.fixture(scope="module")
def fresh_process(staged, staged_space, tmp_path_factory):
    """The report of FRESH_PROCESS_SCRIPT, run outside the repo with -I (no cwd, no PYTHONPATH on sys.path)
    and -B (no __pycache__ written into the staged folders)."""
    folder = tmp_path_factory.mktemp("fresh")
    np.save(folder / "hu.npy", HU_SLICE)
    env = {**os.environ, "HF_MODULES_CACHE": str(folder / "modules"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("MODEL_ID", None)
    space = staged_space[0]
    command = [sys.executable, "-I", "-B", "-c", FRESH_PROCESS_SCRIPT, str(staged), str(folder / "hu.npy"), str(space)]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_staged_repo_loads_as_remote_code_with_the_same_logits(staged, fresh_process):
    assert fresh_process["this_repo_imported"] == []
    assert fresh_process["classes"] == ["DualAttentionResNetConfig", "CTImageProcessor",
                                        "DualAttentionResNetForImageClassification", "DualAttentionResNetModel"]
    assert fresh_process["class_modules"][0].startswith("transformers_modules.")
    source = tiny_model()
    processor = CTImageProcessor.from_pretrained(staged)
    with torch.no_grad():
        expected = source(processor(HU_SLICE, return_tensors="pt")["pixel_values"]).logits
    torch.testing.assert_close(torch.tensor(fresh_process["logits"]), expected, rtol=1e-5, atol=1e-5)
    assert fresh_process["pooled_shape"] == [1, source.dual_attention_resnet.hidden_size]
    assert fresh_process["pipeline"]["label"] == "metastatic"
    assert fresh_process["pipeline"]["score"] == pytest.approx(fresh_process["png_probability"], abs=1e-6)


def test_pickle_only_model_is_converted_to_safetensors(tiny_model_dir, tmp_path):
    pickled = copy_model_folder(tiny_model_dir, tmp_path / "pickled", weights=False)
    model = tiny_model()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")

    out = stage_model_repo(pickled, tmp_path / "out", repo_id="me/pdac-ln", provenance=PHANTOM)

    assert not [p for p in out.rglob("*") if p.name.endswith(PICKLE_SUFFIXES)]
    from safetensors.torch import load_file

    converted = load_file(out / "model.safetensors")
    assert converted.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(converted[name], tensor), name


class RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_with_code_is_refused_without_running_it(tiny_model_dir, tmp_path):
    pickled = copy_model_folder(tiny_model_dir, tmp_path / "pickled", weights=False)
    marker = tmp_path / "code_ran"
    torch.save({"weight": RunsCodeWhenUnpickled(marker)}, pickled / "pytorch_model.bin")

    with pytest.raises(ValueError, match="is not plain tensors") as refused:
        stage_model_repo(pickled, tmp_path / "out", repo_id="me/pdac-ln", provenance=PHANTOM)
    assert "\n" not in str(refused.value)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_stages_the_code_saved_with_the_weights_and_says_when_it_differs(tiny_model_dir, tmp_path, capsys):
    model = copy_model_folder(tiny_model_dir, tmp_path / "model")
    with open(model / "attention.py", "a") as saved:
        saved.write("# as the model was trained last month\n")
    argv = ["--model", str(model), "--repo-id", "me/pdac-ln", "--dry-run", "--trained-on", "phantom"]

    assert main(argv + ["--stage-dir", str(tmp_path / "saved")]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: the code saved with the weights differs from modeling/ in attention.py; publishing the saved code"]
    assert (tmp_path / "saved" / "attention.py").read_bytes() == (model / "attention.py").read_bytes()
    assert (tmp_path / "saved" / "modeling_dual_attention_resnet.py").read_bytes() == (
        model / "modeling_dual_attention_resnet.py").read_bytes()

    assert main(argv + ["--code", "current", "--stage-dir", str(tmp_path / "current")]) == 0
    assert "publishing today's modeling/ (--code current)" in capsys.readouterr().out
    assert (tmp_path / "current" / "attention.py").read_bytes() == (MODELING_DIR / "attention.py").read_bytes()

    unchanged = ["--model", str(tiny_model_dir), "--repo-id", "me/pdac-ln", "--dry-run", "--trained-on", "phantom"]
    assert main(unchanged + ["--stage-dir", str(tmp_path / "unchanged")]) == 0
    assert "note:" not in capsys.readouterr().out


def test_stages_the_custom_pipeline_config_json_names(tiny_model_dir, tmp_path, capsys):
    """`custom_pipelines` (transformers' format) names a file of the model folder; it and its relative
    imports are staged, and a folder missing one is refused in one line."""
    model = copy_model_folder(tiny_model_dir, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["custom_pipelines"] = {"image-classification": {
        "impl": "pipeline_ct.CTImageClassificationPipeline", "pt": ["AutoModelForImageClassification"],
        "tf": [], "type": "image"}}
    (model / "config.json").write_text(json.dumps(config))
    (model / "pipeline_ct.py").write_text(
        "from .dicom_inputs import read_input\n\n\nclass CTImageClassificationPipeline:\n    pass\n")
    (model / "dicom_inputs.py").write_text("def read_input(path):\n    return path\n")

    out = stage_model_repo(model, tmp_path / "out", repo_id="me/pdac-ln", provenance=PHANTOM)
    assert {"pipeline_ct.py", "dicom_inputs.py"} <= files_under(out)
    assert json.loads((out / "config.json").read_text())["custom_pipelines"] == config["custom_pipelines"]

    (model / "dicom_inputs.py").unlink()
    argv = ["--model", str(model), "--repo-id", "me/pdac-ln", "--dry-run", "--trained-on", "phantom",
            "--stage-dir", str(tmp_path / "refused")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dicom_inputs.py not found" in err and "--code current" in err
    assert not (tmp_path / "refused").exists()


# --- the model card ---------------------------------------------------------------------------------------------


def test_card_metadata_parses_and_carries_the_metrics(staged, eval_dir):
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    meta = metadata_load(staged / "README.md")
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-classification"
    assert meta["license"] == "apache-2.0"
    assert {"medical-imaging", "ct", "pdac", "lymph-node", "grad-cam", "synthetic-data"} <= set(meta["tags"])

    card = ModelCard.load(staged / "README.md")
    results = {(r.metric_config, r.metric_type): r for r in card.data.eval_results}
    hub_names = {"auc_roc": "roc_auc"}
    for level, block in (("slice-level", metrics), ("patient-level", metrics["patient_level"])):
        for key in ("accuracy", "precision", "recall", "specificity", "f1", "auc_roc"):
            if block[key]["value"] is None:
                assert (level, key) not in results  # the model-index holds numbers only
                continue
            result = results[(level, hub_names.get(key, key))]
            assert result.metric_value == block[key]["value"]
            interval_args = (result.metric_args["ci_low"], result.metric_args["ci_high"])
            assert interval_args == (block[key]["ci_low"], block[key]["ci_high"])
            assert result.metric_args["threshold"] == metrics["threshold"]
            assert result.dataset_split == "test"
    assert len(results) == 11


def test_card_text_reports_results_and_says_synthetic(staged):
    text = (staged / "README.md").read_text()
    # headline slice-level accuracy 0.81 (0.70 to 0.90), patient-level AUC 0.92 (0.85 to 0.97)
    assert "| Accuracy | 81.0 % (70.0 % to 90.0 %) |" in text
    assert "| AUC-ROC | 0.920 (0.850 to 0.970) |" in text
    assert "| Precision | undefined |" in text and "| Precision | 78.0 % (64.0 % to 89.0 %) |" in text
    assert "Trained and evaluated on synthetic data only" in text
    assert "not a medical device" in text
    assert "Expected calibration error 0.083, Brier score 0.171" in text
    assert "| Grad-CAM | Pointing game | 0.800 (0.400 to 1.000) |" in text
    assert "| ResNet-50 + dual attention | 87.33 | 82.56 | 94.67 | 88.20 | 0.97 |" in text
    for figure in ("roc_curve", "confusion_matrix", "reliability_diagram"):
        assert f"](evaluation/{figure}.png)" in text
    assert 'trust_remote_code=True' in text and 'revision = "main"' in text
    assert "PHANTOM-" not in text


def test_card_without_eval_says_so_and_real_data_is_not_called_synthetic(tiny_model_dir, tmp_path):
    real = TrainingProvenance(synthetic=False)
    out = stage_model_repo(tiny_model_dir, tmp_path / "out", repo_id="me/pdac-ln", provenance=real)
    card = ModelCard.load(out / "README.md")
    assert card.data.eval_results is None
    assert "Not evaluated" in card.text
    assert "synthetic" not in card.text.lower() and "synthetic-data" not in card.data.tags
    assert not (out / "evaluation").exists()


def test_card_shows_the_maps_measured_localisation_and_the_threshold_note(tiny_model_dir, staged, tmp_path):
    text = (staged / "README.md").read_text()  # a model whose maps were never evaluated
    assert text.count("never evaluated against lesion masks") == 2

    model = copy_model_folder(tiny_model_dir, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    config["decision_threshold"] = 0.99963
    config["threshold_note"] = "chosen on a validation split that separates the classes perfectly"
    config["localisation"] = {"gradcam": {
        "pointing_game": 0.93, "pointing_game_ci": [0.81, 1.0], "energy_in_mask": 0.42, "n_slices": 51,
        "chance": 0.018, "split": "test"}}  # attention absent: never evaluated
    (model / "config.json").write_text(json.dumps(config))

    out = stage_model_repo(model, tmp_path / "out", repo_id="me/pdac-ln", provenance=PHANTOM)
    text = (out / "README.md").read_text()
    assert ("| Grad-CAM (backbone stage 4, the last) | on its evaluation (test split), its peak fell on the lesion "
            "in 93 % of 51 metastatic slices (95 % CI 81 % to 100 %; a random point: 1.8 %), with 42 % of its "
            "energy inside the lesion. This Grad-CAM explains backbone stage 4's output before the attention "
            "module: its activations do not pass through the attention map. |") in text

    config["gradcam_stage"] = 3  # moved after that evaluation: those numbers are not this map's
    (model / "config.json").write_text(json.dumps(config))
    out = stage_model_repo(model, tmp_path / "stage3", repo_id="me/pdac-ln", provenance=PHANTOM)
    assert "| Grad-CAM (backbone stage 3) | never evaluated against lesion masks" in (out / "README.md").read_text()
    config["spatial_attention_stages"] = [3]  # the quickstart's layout: the gate multiplies what Grad-CAM explains
    (model / "config.json").write_text(json.dumps(config))
    out = stage_model_repo(model, tmp_path / "gated", repo_id="me/pdac-ln", provenance=PHANTOM)
    assert "already multiplied (the gate sits on that stage)" in (out / "README.md").read_text()
    del config["spatial_attention_stages"]
    config["gradcam_stage"] = 4
    assert "| Spatial attention | never evaluated against lesion masks" in text
    assert ("`config.decision_threshold` = 0.9996 (chosen on a validation split that separates the classes "
            "perfectly)") in text

    config["attention"] = "channel"
    (model / "config.json").write_text(json.dumps(config))
    out = stage_model_repo(model, tmp_path / "channel", repo_id="me/pdac-ln", provenance=PHANTOM)
    text = (out / "README.md").read_text()
    assert "| Spatial attention | none: this model has no spatial attention branch |" in text


def test_training_data_is_read_from_the_run(tiny_model_dir, prepared_dataset, phantom_dir, tmp_path):
    from training.prepare import prepare_dataset

    # the phantom prepared from its folders: patient IDs become salted hashes, file names keep the pseudonym
    phantom_from_folders = tmp_path / "phantom_folders_ds"
    prepare_dataset(phantom_dir, phantom_from_folders, size=TINY_SIZE, seed=0, num_workers=1)
    other_ds = write_tiny_prepared(tmp_path / "other_ds")  # patients "train-00", ...: not the phantom
    run = tmp_path / "run"
    copy_model_folder(tiny_model_dir, run / "best")
    (run / "config.yaml").write_text(
        f"data: {prepared_dataset}\nepochs: 3\nlr: 0.0001\npretrained_backbone: false\n"
        "backbone_weights: /secret/weights.pth\noutput_dir: /secret/run\n"
    )
    Image.new("RGB", (8, 8), "white").save(run / "loss_curve.png")
    (run / "history.json").write_text("[]")

    provenance = read_provenance(run / "best")
    assert provenance.synthetic is True
    assert provenance.settings == {"pretrained_backbone": False, "epochs": 3, "lr": 0.0001}  # no paths
    expected_counts = json.loads((prepared_dataset / "prepare_info.json").read_text())["counts"]
    assert provenance.counts == expected_counts
    assert read_provenance(run / "best", data_dir=phantom_from_folders).synthetic is True
    # only the publisher can say a model was trained on patients
    with pytest.raises(ValueError, match="--trained-on real"):
        read_provenance(run / "best", data_dir=other_ds)
    assert read_provenance(run / "best", "real", data_dir=other_ds).synthetic is False

    out = stage_model_repo(run / "best", tmp_path / "out", repo_id="me/pdac-ln", provenance=provenance)
    text = (out / "README.md").read_text()
    test_counts = expected_counts["test"]
    assert f"| test | {test_counts['slices']} | {test_counts['patients']} | {test_counts['positives']} |" in text
    assert "| `pretrained_backbone` | False |" in text
    assert (out / "evaluation" / "loss_curve.png").is_file() and "](evaluation/loss_curve.png)" in text
    patient_ids = set(datasets.load_from_disk(str(prepared_dataset))["test"]["patient_id"])
    for path in out.rglob("*"):
        if path.suffix in (".md", ".json", ".py"):
            content = path.read_text()
            assert not [pid for pid in patient_ids if pid in content], path
            assert "/secret/" not in content and str(prepared_dataset) not in content, path

    (run / "config.yaml").write_text("epochs: 3\n")
    with pytest.raises(ValueError, match="--trained-on"):
        read_provenance(run / "best")


def test_stages_what_training_evaluate_writes(tiny_model_dir, prepared_dataset, tmp_path):
    """The real evaluate's metrics.json and figures go through staging into the model-index."""
    from training.evaluate import evaluate

    model_dir = tmp_path / "run" / "best"
    shutil.copytree(tiny_model_dir, model_dir)  # evaluate writes the operating threshold into config.json
    metrics = evaluate(model_dir, prepared_dataset, output_dir=tmp_path / "eval", resamples=20)
    out = stage_model_repo(model_dir, tmp_path / "out", repo_id="me/pdac-ln", provenance=PHANTOM,
                           eval_dir=tmp_path / "eval")

    card = ModelCard.load(out / "README.md")
    slice_auc = next(
        r for r in card.data.eval_results if r.metric_type == "roc_auc" and r.metric_config == "slice-level")
    assert slice_auc.metric_value == metrics["auc_roc"]["value"]
    assert slice_auc.metric_args["threshold"] == metrics["threshold"]
    assert json.loads((out / "config.json").read_text())["decision_threshold"] == metrics["threshold"]
    assert f"probability >= {metrics['threshold']:.3f}, the model's `config.decision_threshold`" in card.text
    assert {p.name for p in (out / "evaluation").iterdir()} == {
        "metrics.json", "roc_curve.png", "confusion_matrix.png", "reliability_diagram.png"}


# --- staging never half-writes ---------------------------------------------------------------------------------------


def test_stage_refuses_to_overwrite_and_leaves_nothing_on_failure(tiny_model_dir, tmp_path, capsys):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("do not delete")
    argv = ["--model", str(tiny_model_dir), "--repo-id", "me/pdac-ln", "--dry-run", "--trained-on", "phantom"]
    assert main(argv + ["--stage-dir", str(keep)]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in keep.iterdir()] == ["notes.txt"]

    broken = copy_model_folder(tiny_model_dir, tmp_path / "broken", weights=False)
    assert main(["--model", str(broken), "--repo-id", "me/pdac-ln", "--dry-run", "--trained-on", "phantom",
                 "--stage-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no model.safetensors" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "mine"]  # no out/, no temporary folder


def test_overwrite_replaces_a_staged_folder_as_a_whole(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--dry-run", "--trained-on", "phantom", "--stage-dir", str(out)]
    assert main(argv + ["--repo-id", "me/first"]) == 0
    (out / "left_over.txt").write_text("from an earlier stage")
    assert main(argv + ["--repo-id", "me/second"]) == 1  # without --overwrite the first stage stays
    assert "pass --overwrite" in capsys.readouterr().err
    assert 'repo = "me/first"' in (out / "README.md").read_text()

    assert main(argv + ["--repo-id", "me/second", "--overwrite"]) == 0
    readme = (out / "README.md").read_text()
    assert 'repo = "me/second"' in readme and "me/first" not in readme
    assert not (out / "left_over.txt").exists(), "the old folder is replaced, not merged into"
    assert (out / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no temporary or previous folder left behind"


def test_bad_metrics_json_is_refused_in_one_line(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps({"split": "test", "n": 3, "threshold": 0.5}))
    assert main(["--model", str(tiny_model_dir), "--eval", str(tmp_path / "eval"), "--repo-id", "me/x",
                 "--dry-run", "--trained-on", "phantom", "--stage-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "lacks 'accuracy'" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# --- the Space ----------------------------------------------------------------------------------------------------


def test_staged_space_imports_its_own_modeling_and_serves_the_staged_model(staged, staged_space, fresh_process):
    space, files = staged_space
    assert {"app.py", "requirements.txt", "README.md", "modeling/__init__.py", "modeling/explain.py",
            "modeling/ct_dicom.py"} <= files
    assert not [name for name in files if "__pycache__" in name or name.endswith(PICKLE_SUFFIXES)]
    assert {f"examples/{p.name}" for p in (SPACE_DIR / "examples").glob("*.dcm")} <= files
    assert "modeling/inference.py" in files and "modeling/predict.py" not in files  # the demo never imports the CLI
    assert not {"make_examples.py", "app.pyi"} & files  # files app.py does not import
    card = SpaceCard.load(space / "README.md")
    assert card.data.sdk == "gradio" and "me/pdac-ln" in card.data.models and card.data.app_file == "app.py"

    served = fresh_process["space"]
    assert Path(served["modeling"]).resolve().is_relative_to(space.resolve())
    assert served["model"] == str(staged) and served["served"] == "Blocks"


def test_space_refuses_example_dicoms_that_are_not_phantoms(tmp_path):
    space_dir = tmp_path / "space_src"
    (space_dir / "examples").mkdir(parents=True)
    for name in ("app.py", "README.md", "requirements.txt"):
        (space_dir / name).write_text("---\nsdk: gradio\n---\n" if name == "README.md" else "")
    write_ct_dicom(space_dir / "examples" / "ok.dcm", np.zeros((8, 8)), patient_id="PHANTOM-000-0001")
    write_ct_dicom(space_dir / "examples" / "scan.dcm", np.zeros((8, 8)), patient_id="JOHN-DOE-1970")
    with pytest.raises(ValueError, match="scan.dcm") as refused:
        stage_space(tmp_path / "out", model_id="me/pdac-ln", space_dir=space_dir)
    assert "JOHN-DOE" not in str(refused.value)
    assert not (tmp_path / "out").exists()


# --- pushing --------------------------------------------------------------------------------------------------------


def test_push_without_network_fails_in_one_line_and_never_shows_the_token(tiny_model_dir, eval_dir, tmp_path):
    args = ["--model", str(tiny_model_dir), "--eval", str(eval_dir), "--repo-id", "me/pdac-ln",
            "--trained-on", "phantom"]
    cases = {
        "offline": {"HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "1"},
        "no token": {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"},
        "unreachable": {"HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"},
    }
    outputs = {}
    for case, env in cases.items():
        workdir = tmp_path / case.replace(" ", "_")
        workdir.mkdir()
        result = run_cli(args, env, workdir)
        outputs[case] = result
        assert result.returncode == 1, (case, result.stdout, result.stderr)
        assert FAKE_TOKEN not in result.stdout + result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, (case, result.stderr)
        # a push stages into a temporary folder: nothing is left in the working folder
        assert {p.name for p in workdir.iterdir()} <= {"hf_home"}, case
    assert "HF_HUB_OFFLINE" in outputs["offline"].stderr
    assert "no Hugging Face token" in outputs["no token"].stderr
    assert "pushing to model me/pdac-ln failed" in outputs["unreachable"].stderr
    assert "staged model repo" in outputs["unreachable"].stdout  # it got as far as the network call


class RecordingHfApi:
    """Stands in for HfApi: records calls; `fail_with` makes upload_folder raise that message."""

    calls = []
    fail_with = None

    def __init__(self, token=None):
        self.calls.append(("init", {"token_given": token == FAKE_TOKEN}))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        if self.fail_with:
            raise RuntimeError(self.fail_with)
        folder = Path(kwargs["folder_path"])
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        self.calls.append(("upload_folder", {**kwargs, "files": files}))
        from huggingface_hub import CommitInfo

        oid = "0123456789abcdef0123456789abcdef01234567" if kwargs.get("repo_type") == "model" else "f" * 40
        return CommitInfo(commit_url=f"https://hf.co/{kwargs['repo_id']}/commit/{oid}", commit_message="",
                          commit_description="", oid=oid)

    def add_space_variable(self, repo_id, key, value):
        self.calls.append(("add_space_variable", {"repo_id": repo_id, key: value}))


def test_push_honours_flags_and_wires_the_space_to_the_model_commit(
    tiny_model_dir, eval_dir, tmp_path, monkeypatch, capsys
):
    RecordingHfApi.calls, RecordingHfApi.fail_with = [], None
    monkeypatch.setattr(push_module, "HfApi", RecordingHfApi)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(push_module.constants, "is_offline_mode", lambda: False)
    argv = ["--model", str(tiny_model_dir), "--eval", str(eval_dir), "--repo-id", "me/pdac-ln",
            "--trained-on", "phantom", "--private", "--revision", "v1", "--space-id", "me/pdac-ln-demo",
            "--stage-dir", str(tmp_path / "out")]
    assert main(argv) == 0
    calls = [(name, kw) for name, kw in RecordingHfApi.calls if name != "init"]
    assert all(kw["token_given"] for name, kw in RecordingHfApi.calls if name == "init")
    create_model, branch, upload_model, create_space, upload_space, *variables = calls
    assert create_model == ("create_repo", {"repo_id": "me/pdac-ln", "repo_type": "model", "private": True,
                                            "exist_ok": True, "space_sdk": None})
    assert branch == ("create_branch",
                      {"repo_id": "me/pdac-ln", "branch": "v1", "repo_type": "model", "exist_ok": True})
    assert upload_model[1]["revision"] == "v1" and upload_model[1]["create_pr"] is False
    assert upload_model[1]["delete_patterns"] == "*"  # stale remote files (an old pickle) go in the same commit
    assert "AUC 0.910, 95% CI 0.840-0.970" in upload_model[1]["commit_message"]
    assert "model.safetensors" in upload_model[1]["files"]
    assert create_space[1]["repo_type"] == "space" and create_space[1]["space_sdk"] == "gradio"
    assert "app.py" in upload_space[1]["files"] and "modeling/explain.py" in upload_space[1]["files"]
    assert variables == [("add_space_variable", {"repo_id": "me/pdac-ln-demo", "MODEL_ID": "me/pdac-ln"}),
                         ("add_space_variable", {"repo_id": "me/pdac-ln-demo",
                                                 "MODEL_REVISION": "0123456789abcdef0123456789abcdef01234567"})]
    out = capsys.readouterr()
    assert "pushed model: https://hf.co/me/pdac-ln/commit/" in out.out  # positive control: the push was reported
    assert FAKE_TOKEN not in out.out + out.err
    assert (tmp_path / "out" / "README.md").is_file() and (tmp_path / "out-space" / "app.py").is_file()


def test_keep_remote_files_deletes_nothing_on_the_hub(tiny_model_dir, tmp_path, monkeypatch):
    RecordingHfApi.calls, RecordingHfApi.fail_with = [], None
    monkeypatch.setattr(push_module, "HfApi", RecordingHfApi)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(push_module.constants, "is_offline_mode", lambda: False)
    argv = ["--model", str(tiny_model_dir), "--repo-id", "me/pdac-ln", "--trained-on", "phantom",
            "--space-id", "me/pdac-ln-demo", "--keep-remote-files"]
    assert main(argv) == 0
    uploads = [kwargs for name, kwargs in RecordingHfApi.calls if name == "upload_folder"]
    assert [upload["repo_type"] for upload in uploads] == ["model", "space"]
    assert [upload["delete_patterns"] for upload in uploads] == [None, None]


def test_push_error_is_one_line_with_the_token_blanked(tiny_model_dir, tmp_path, monkeypatch, capsys):
    RecordingHfApi.calls = []
    RecordingHfApi.fail_with = f"401 Unauthorized\nrequest headers: authorization: Bearer {FAKE_TOKEN}"
    monkeypatch.setattr(push_module, "HfApi", RecordingHfApi)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(push_module.constants, "is_offline_mode", lambda: False)
    argv = ["--model", str(tiny_model_dir), "--repo-id", "me/pdac-ln", "--trained-on", "phantom", "--create-pr"]
    assert main(argv) == 1
    out = capsys.readouterr()
    assert FAKE_TOKEN not in out.out + out.err
    assert out.err == ("error: pushing to model me/pdac-ln failed: RuntimeError: 401 Unauthorized "
                       "request headers: authorization: Bearer ***\n")
