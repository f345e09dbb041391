"""Model comparison: one table row per model, the paired AUC difference, and early refusal of a model
that cannot run at the chosen size."""

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.compare import MODELS, main

pytestmark = pytest.mark.usefixtures("single_thread")
TINY_BACKBONES = "vgg16=resnet10t,resnet50=resnet18,vit_b16=resnet10t,resnet50_dual=resnet10t"
SHORT = ["--epochs", "1", "--image-size", "32", "--batch-size", "8", "--lr", "1e-3", "--frozen-stages", "0",
         "--no-pretrained-backbone", "--bootstrap-resamples", "200"]


def test_compare_writes_one_row_per_model_with_paired_auc_differences(signal_dataset, tmp_path, capsys):
    out = tmp_path / "cmp"
    rows = main(["--data", str(signal_dataset), "--output-dir", str(out), "--backbones", TINY_BACKBONES, *SHORT])
    assert [row["key"] for row in rows] == list(MODELS)
    with open(out / "comparison.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["key"] for r in table] == list(MODELS)
    assert [r["backbone"] for r in table] == ["resnet10t", "resnet18", "resnet10t", "resnet10t"]
    assert [r["attention"] for r in table] == ["none", "none", "none", "dual"]

    # The difference is AUC(attention) - AUC(baseline) on the same test slices.
    def test_probabilities(key):
        with open(out / "eval" / key / "predictions.csv", newline="") as handle:
            predictions = list(csv.DictReader(handle))
        labels = np.array([int(p["label"]) for p in predictions])
        return labels, np.array([float(p["probability"]) for p in predictions])

    labels, reference = test_probabilities("resnet50_dual")
    for row in table[:3]:
        _, baseline = test_probabilities(row["key"])
        expected = roc_auc_score(labels, reference) - roc_auc_score(labels, baseline)
        assert float(row["delta_auc_vs_attention"]) == pytest.approx(expected)
        assert float(row["delta_auc_ci_low"]) <= expected <= float(row["delta_auc_ci_high"])
    assert table[3]["delta_auc_vs_attention"] == ""
    # Grad-CAM localisation per model comes from that model's own evaluation (the split has masks).
    for row in table:
        gradcam = json.loads((out / "eval" / row["key"] / "metrics.json").read_text())["localisation"]["gradcam"]
        assert float(row["gradcam_pointing_game"]) == pytest.approx(gradcam["pointing_game"]["value"])
        assert float(row["gradcam_energy_in_mask"]) == pytest.approx(gradcam["energy_in_mask"]["value"])

    markdown = (out / "comparison.md").read_text()
    assert markdown.count("\n| ") == 1 + len(MODELS)  # header + one row per model
    assert "| ResNet-50 + dual attention [resnet10t] |" in markdown and "reference" in markdown
    assert "| ViT-B/16 [resnet10t] |" in capsys.readouterr().out


def test_compare_refuses_a_model_that_cannot_run_at_the_size_before_training(signal_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(signal_dataset), "--output-dir", str(tmp_path / "cmp"), "--models", "resnet50_dual,vit_b16",
              "--backbones", "resnet50_dual=resnet10t,vit_b16=vit_tiny_patch16_224", *SHORT])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: model vit_b16 (vit_tiny_patch16_224") and "32 px" in error
    assert not (tmp_path / "cmp" / "runs").exists()
