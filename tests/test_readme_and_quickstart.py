"""The newcomer's path: the README's commands exist, its Python snippets run, the quickstart runs end to end."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.dicom_writer import write_ct_dicom
from training.paper import paper_table_rows
from training.quickstart import quickstart

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_make_commands_are_makefile_targets():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    used = set(re.findall(r"\bmake (\w+)", README))
    assert {"demo", "test"} <= used
    assert used <= targets


def test_readme_python_modules_and_scripts_exist():
    shell = "\n".join(code_blocks("bash"))
    modules = set(re.findall(r"python -m ([\w.]+)", shell)) | set(re.findall(r"launch -m ([\w.]+)", shell))
    assert {"training.prepare", "training.train", "training.evaluate", "modeling.predict", "hub_upload"} <= modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module
    for script in re.findall(r"python ([\w/]+\.py)", shell):
        assert (ROOT / script).is_file(), script
    for config in re.findall(r"--config (\S+)", shell):
        assert (ROOT / config).is_file(), config


def test_readme_paper_table_is_the_one_definition():
    for row in paper_table_rows():
        assert row in README, row


def test_readme_python_snippets_run_on_a_saved_model(tiny_model_dir, tmp_path, monkeypatch):
    hu = np.full((80, 80), -1000.0)
    hu[10:70, 10:70] = 40.0
    write_ct_dicom(tmp_path / "slice.dcm", hu)
    Image.fromarray(np.linspace(0, 255, 80 * 80).reshape(80, 80).astype(np.uint8)).save(tmp_path / "windowed_slice.png")
    source = "\n".join(code_blocks("python"))
    assert '"quickstart_output/run/best"' in source and '"slice.dcm"' in source
    source = source.replace('"quickstart_output/run/best"', repr(str(tiny_model_dir)))
    monkeypatch.chdir(tmp_path)  # "slice.dcm" and "windowed_slice.png" are relative paths in the snippets
    namespace = {}
    exec(compile(source, "README.md", "exec"), namespace)
    assert 0.0 <= namespace["probability"] <= 1.0
    assert namespace["rgb"].shape == (64, 64, 3) and namespace["rgb"].dtype == np.uint8
    assert namespace["maps"]["gradcam"].shape == (1, 64, 64)


@pytest.mark.slow
def test_quickstart_runs_end_to_end_at_a_reduced_size(tmp_path, capsys):
    metrics = quickstart(tmp_path, n_per_class=18, phantom_size=64, epochs=2, image_size=32, bootstrap_resamples=50)
    for path in ("phantom/manifest.csv", "data/prepare_info.json", "run/best/model.safetensors", "run/loss_curve.png",
                 "run/history.json", "eval/report.md", "eval/roc_curve.png", "eval/metrics.json", "timings.json"):
        assert (tmp_path / path).is_file(), path
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["auc_roc"] == metrics["auc_roc"]
    assert metrics["localisation"] is not None  # the phantom's masks reach the evaluation
    out = capsys.readouterr().out
    assert f"python space/app.py --model {tmp_path / 'run' / 'best'}" in out
