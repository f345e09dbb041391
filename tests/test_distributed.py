"""The training script under two CPU processes (accelerate launch, gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from training.data import load_prepared
from training.evaluate import load_model, model_inputs, predict_probabilities

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]


def test_two_process_training_writes_one_best_whose_validation_metrics_match_one_process(signal_dataset, tmp_path):
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "training.train", "--data", str(signal_dataset), "--output-dir", str(run),
        "--backbone", "resnet10t", "--no-pretrained-backbone", "--frozen-stages", "0",
        "--image-size", "32", "--epochs", "2", "--batch-size", "4", "--lr", "1e-3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # Only the main process prints and saves.
    assert result.stdout.count("best epoch") == 1
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["best", "state"]

    history = json.loads((run / "history.json").read_text())
    best = history["epochs"][history["best_epoch"] - 1]
    dataset_dict, info = load_prepared(signal_dataset)
    model, processor = load_model(run / "best")
    probabilities = predict_probabilities(model, model_inputs(dataset_dict, info, processor)["validation"])
    labels = np.asarray(dataset_dict["validation"]["label"])
    # 9 validation slices over 2 processes: the padded duplicate must not be counted.
    assert len(probabilities) == 9
    assert best["val_auc"] == pytest.approx(roc_auc_score(labels, probabilities), abs=1e-6)
    assert best["val_loss"] == pytest.approx(log_loss(labels, probabilities), abs=1e-5)
