"""A saved model works as Hub remote code: loaded in a process that never imports this repo's packages."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_user_script, user_inputs

from modeling import CTImageProcessor, DualAttentionResNetForImageClassification

CODE_FILES = {
    "configuration_dual_attention_resnet.py",
    "modeling_dual_attention_resnet.py",
    "attention.py",
    "backbone_stages.py",
    "image_processing_ct.py",
    "ct_dicom.py",
    "dicom_vocabulary.py",
    "pipeline_ct_classification.py",
}

# Runs in a fresh interpreter from an empty folder. `sys.modules[name] = None` makes any import of the
# repo's packages fail, so everything below must come from the files save_pretrained copied.
USER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.modules["modeling"] = None
    sys.modules["training"] = None
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

    model_dir, dicom_path, png_path, out_path = sys.argv[1:]
    model = AutoModelForImageClassification.from_pretrained(model_dir, trust_remote_code=True)
    base = AutoModel.from_pretrained(model_dir, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=True)
    classifier = pipeline("image-classification", model=model_dir, trust_remote_code=True)
    with torch.no_grad():
        dicom_pixels = processor(dicom_path, return_tensors="pt")["pixel_values"]
        png_pixels = processor(Image.open(png_path), return_tensors="pt")["pixel_values"]
        results = {
            "dicom_pixels": dicom_pixels,
            "dicom_logits": model(dicom_pixels).logits,
            "dicom_pooled": base(dicom_pixels).pooler_output,
            "png_logits": model(png_pixels).logits,
        }
    torch.save(results, out_path)
    # A model loaded as remote code saves the same code again (what a re-upload publishes).
    model.save_pretrained(out_path + ".resaved")
    print(json.dumps({
        "resaved_files": sorted(os.listdir(out_path + ".resaved")),
        "pipeline": classifier(png_path),
        "modules": [type(obj).__module__ for obj in (model, base, processor)],
        "repo_imported": [name for name in ("modeling", "training") if sys.modules.get(name) is not None],
    }))
    """
)


@pytest.fixture(scope="module")
def remote_run(tiny_model_dir, tmp_path_factory):
    """Writes a CT DICOM and a windowed PNG, runs USER_SCRIPT on them; returns (paths, tensors, report)."""
    work = tmp_path_factory.mktemp("remote_user")
    _, dicom_path, png_path = user_inputs(work, seed=0)
    out_path = work / "results.pt"
    report = run_user_script(USER_SCRIPT, work, tiny_model_dir, dicom_path, png_path, out_path)
    return {"dicom": dicom_path, "png": png_path}, torch.load(out_path), report


def test_saved_folder_holds_code_auto_map_and_window(tiny_model_dir):
    files = set(os.listdir(tiny_model_dir))
    assert CODE_FILES | {"config.json", "model.safetensors", "preprocessor_config.json"} <= files
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert set(config["auto_map"]) == {
        "AutoConfig", "AutoModel", "AutoModelForImageClassification", "AutoImageProcessor"
    }
    processor_config = json.loads((tiny_model_dir / "preprocessor_config.json").read_text())
    assert (processor_config["window_center"], processor_config["window_width"]) == (60.0, 400.0)
    assert processor_config["auto_map"]["AutoImageProcessor"] == "image_processing_ct.CTImageProcessor"


def test_saved_processor_config_follows_transformers_conventions(tiny_model_dir):
    processor_config = json.loads((tiny_model_dir / "preprocessor_config.json").read_text())
    assert processor_config["size"] == {"height": 64, "width": 64}
    assert CTImageProcessor.from_pretrained(tiny_model_dir).size == 64
    assert CTImageProcessor(size={"height": 32, "width": 32}).size == 32
    with pytest.raises(ValueError, match=r"`size` must be .* got \{'height': 32, 'width': 48\}"):
        CTImageProcessor(size={"height": 32, "width": 48})


def test_processor_return_tensors_none_np_and_pt():
    processor = CTImageProcessor(size=32)
    hu = [np.full((40, 40), 60.0), np.full((50, 50), 260.0)]
    as_torch = processor(hu, return_tensors="pt")["pixel_values"]
    as_numpy = processor(hu, return_tensors="np")["pixel_values"]
    as_list = processor(hu, return_tensors=None)["pixel_values"]

    assert isinstance(as_torch, torch.Tensor) and as_torch.shape == (2, 3, 32, 32)
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float32
    np.testing.assert_array_equal(as_numpy, as_torch.numpy())
    assert isinstance(as_list, list) and [a.shape for a in as_list] == [(3, 32, 32)] * 2
    np.testing.assert_array_equal(np.stack(as_list), as_numpy)


def test_remote_code_never_imports_the_repo(remote_run):
    _, _, report = remote_run
    assert report["repo_imported"] == []
    assert all(module.startswith("transformers_modules.") for module in report["modules"]), report["modules"]
    model_code = CODE_FILES - {"image_processing_ct.py", "ct_dicom.py", "dicom_vocabulary.py"}  # the processor's
    assert model_code | {"config.json", "model.safetensors"} <= set(report["resaved_files"])


def test_remote_code_gives_the_repo_classes_numbers_on_a_dicom(remote_run, tiny_model_dir):
    paths, remote, _ = remote_run
    model = DualAttentionResNetForImageClassification.from_pretrained(tiny_model_dir)
    processor = CTImageProcessor.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        pixels = processor(paths["dicom"])["pixel_values"]
        logits = model(pixels).logits
        pooled = model.dual_attention_resnet(pixels).pooler_output

    assert pixels.shape == (1, 3, 64, 64)
    torch.testing.assert_close(remote["dicom_pixels"], pixels, rtol=0, atol=0)
    torch.testing.assert_close(remote["dicom_logits"], logits)
    torch.testing.assert_close(remote["dicom_pooled"], pooled)
    torch.testing.assert_close(torch.sigmoid(remote["dicom_logits"]), torch.sigmoid(logits))


def test_pipeline_score_for_metastatic_is_the_sigmoid_of_the_logit(remote_run):
    _, remote, report = remote_run
    [prediction] = report["pipeline"]
    assert prediction["label"] == "metastatic"
    assert prediction["score"] == pytest.approx(torch.sigmoid(remote["png_logits"]).item(), abs=1e-6)


# Loading and running the model, as remote code, must not import `transformers.pipelines` (the pipeline's
# base classes and everything they import); saving it, which writes the pipeline's file, may.
NO_PIPELINES_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.modules["modeling"] = None
    sys.modules["training"] = None
    import torch
    from transformers import AutoModelForImageClassification

    model_dir, save_dir = sys.argv[1:]
    model = AutoModelForImageClassification.from_pretrained(model_dir, trust_remote_code=True)
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    imported_before_saving = "transformers.pipelines" in sys.modules
    model.save_pretrained(save_dir)
    print(json.dumps({"before_saving": imported_before_saving, "saved": sorted(os.listdir(save_dir))}))
    """
)


def test_loading_and_running_the_model_as_remote_code_does_not_import_transformers_pipelines(
    tiny_model_dir, tmp_path
):
    report = run_user_script(NO_PIPELINES_SCRIPT, tmp_path, tiny_model_dir, tmp_path / "resaved")
    assert report["before_saving"] is False
    assert "pipeline_ct_classification.py" in report["saved"]


def test_importing_modeling_does_not_import_transformers_pipelines_until_the_pipeline_is_asked_for(tiny_model_dir):
    script = (
        "import json, sys, torch, modeling\n"
        "model = modeling.DualAttentionResNetForImageClassification.from_pretrained(sys.argv[1])\n"
        "with torch.no_grad(): model(torch.zeros(1, 3, 64, 64))\n"
        "before = 'transformers.pipelines' in sys.modules\n"
        "pipeline_class = modeling.CTMetastasisClassificationPipeline\n"
        "from transformers.pipelines import PIPELINE_REGISTRY\n"
        "registered = PIPELINE_REGISTRY.supported_tasks[modeling.PIPELINE_TASK]['impl'] is pipeline_class\n"
        "print(json.dumps({'before': before, 'registered': registered}))\n"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo)}
    completed = subprocess.run([sys.executable, "-c", script, str(tiny_model_dir)], cwd=repo, env=env,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == {"before": False, "registered": True}
