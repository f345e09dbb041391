"""Evaluation: metric and interval code against hand-computed values, the operating point, and an
end-to-end train -> evaluate run on the tiny signal dataset."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from training.metrics import (
    binary_confusion_matrix,
    binary_metrics,
    calibration,
    metrics_with_intervals,
    operating_point,
    paired_auc_difference,
    patient_bootstrap_weights,
    patient_scores,
    weighted_auc,
    weighted_threshold_metrics,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# A known confusion matrix at threshold 0.5: TP 3, FN 1, FP 2, TN 4.
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
SCORES = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.55, 0.4, 0.2, 0.1, 0.05])


def test_metrics_on_a_known_confusion_matrix():
    assert binary_confusion_matrix(LABELS, SCORES, 0.5) == [[4, 2], [1, 3]]
    metrics = binary_metrics(LABELS, SCORES, 0.5)
    assert metrics["accuracy"] == pytest.approx(7 / 10)
    assert metrics["precision"] == pytest.approx(3 / 5)
    assert metrics["recall"] == pytest.approx(3 / 4)
    assert metrics["specificity"] == pytest.approx(4 / 6)
    assert metrics["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # Pairs (positive, negative) ranked correctly: 0.9, 0.8 beat all 6; 0.6 beats 5; 0.3 beats 3 -> 20 of 24.
    assert metrics["auc_roc"] == pytest.approx(20 / 24)


def test_vectorised_bootstrap_metrics_equal_sklearn_with_weights():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60), 1)  # rounded: many ties, which AUC must count as one half
    patients = np.repeat(np.arange(20), 3)
    weights = patient_bootstrap_weights(patients, 8, seed=3)
    vectorised = weighted_threshold_metrics(labels, scores, 0.5, weights)
    aucs = weighted_auc(labels, scores, weights)
    calls = (scores >= 0.5).astype(int)
    for r, w in enumerate(weights):
        assert vectorised["precision"][r] == pytest.approx(precision_score(labels, calls, sample_weight=w))
        assert vectorised["recall"][r] == pytest.approx(recall_score(labels, calls, sample_weight=w))
        assert vectorised["specificity"][r] == pytest.approx(recall_score(labels, calls, pos_label=0, sample_weight=w))
        assert vectorised["f1"][r] == pytest.approx(f1_score(labels, calls, sample_weight=w))
        assert aucs[r] == pytest.approx(roc_auc_score(labels, scores, sample_weight=w))


def test_bootstrap_resamples_patients_not_slices():
    # Patient A: 5 slices all right; patient B: 5 slices all wrong. Resampling patients can only give
    # accuracy 0, 0.5 or 1 (chance 1/4, 1/2, 1/4), so the 95 % interval is exactly [0, 1].
    labels = np.array([1] * 5 + [1] * 5)
    scores = np.array([0.9] * 5 + [0.1] * 5)
    patients = np.array(["A"] * 5 + ["B"] * 5)
    weights = patient_bootstrap_weights(patients, 1000, seed=0)
    assert np.all(weights[:, :5] == weights[:, [0]]) and np.all(weights[:, 5:] == weights[:, [5]])
    assert set(np.unique(weights[:, 0])) <= {0.0, 1.0, 2.0}
    result = metrics_with_intervals(labels, scores, patients, 0.5, resamples=1000, seed=0)
    assert result["accuracy"] == {"value": 0.5, "ci_low": 0.0, "ci_high": 1.0}
    # Seeded: the same call gives the same interval.
    assert metrics_with_intervals(labels, scores, patients, 0.5, resamples=1000, seed=0)["accuracy"] == result["accuracy"]
    # Undefined metrics (no negatives here) are NaN, not a made-up number.
    assert np.isnan(result["auc_roc"]["value"]) and np.isnan(result["specificity"]["ci_low"])


def test_patient_level_takes_the_max_over_slices():
    labels, scores, ids = patient_scores([0, 0, 1, 0], [0.2, 0.7, 0.4, 0.1], ["p1", "p1", "p2", "p3"])
    assert ids.tolist() == ["p1", "p2", "p3"]
    assert labels.tolist() == [0, 1, 0]
    assert scores.tolist() == [0.7, 0.4, 0.1]


def test_calibration_against_hand_computed_values():
    # Bin [0.1]: mean 0.1, positive rate 0.5 -> 0.4 x 2/4; bin [0.9]: mean 0.9, rate 1 -> 0.1 x 2/4.
    result = calibration([0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9])
    assert result["ece"] == pytest.approx(0.25)
    assert result["brier"] == pytest.approx((0.01 + 0.81 + 0.01 + 0.01) / 4)


def test_operating_point_reaches_target_sensitivity_and_is_the_highest_such_threshold():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.clip(labels * 0.25 + rng.random(200) * 0.75, 0, 1)
    threshold = operating_point(labels, scores, 0.95)
    assert recall_score(labels, scores >= threshold) >= 0.95
    next_higher = np.min(scores[scores > threshold])
    assert recall_score(labels, scores >= next_higher) < 0.95
    with pytest.raises(ValueError, match="positive"):
        operating_point(np.zeros(5, int), np.linspace(0, 1, 5))


def test_paired_auc_difference_of_a_model_with_itself_is_zero_and_detects_a_better_model():
    rng = np.random.default_rng(0)
    labels = np.repeat(rng.integers(0, 2, 40), 2)
    patients = np.repeat(np.arange(40), 2)
    good = np.clip(labels * 0.5 + rng.random(80) * 0.5, 0, 1)
    noise = rng.random(80)
    same = paired_auc_difference(labels, good, good, patients, resamples=500)
    assert (same["value"], same["ci_low"], same["ci_high"], same["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    better = paired_auc_difference(labels, good, noise, patients, resamples=500)
    assert better["value"] == pytest.approx(roc_auc_score(labels, good) - roc_auc_score(labels, noise))
    assert better["ci_low"] > 0 and better["p_value"] < 0.01


@pytest.fixture(scope="module")
def trained_run(signal_dataset, tmp_path_factory):
    from training.train import train

    run = tmp_path_factory.mktemp("eval_run")
    return Path(train({
        "data": signal_dataset, "output_dir": run, "backbone": "resnet10t", "pretrained_backbone": False,
        "frozen_stages": 0, "image_size": 32, "epochs": 2, "batch_size": 8, "lr": 1e-3,
    }))


def test_train_then_evaluate_writes_a_readable_report(trained_run, signal_dataset, tmp_path):
    from training.evaluate import load_model, main, model_inputs, predict_probabilities
    from training.data import load_prepared

    model_dir = f"{trained_run}/best"
    out = tmp_path / "eval"
    metrics = main(["--model", model_dir, "--data", str(signal_dataset), "--output-dir", str(out),
                    "--bootstrap-resamples", "200"])
    written = json.loads((out / "metrics.json").read_text())
    assert written["split"] == "test" and written["n"] == 12 and written["n_patients"] == 6
    for name in ("accuracy", "precision", "recall", "specificity", "f1", "auc_roc"):
        for block in (written, written["at_0.5"], written["patient_level"]):
            assert block[name]["ci_low"] <= block[name]["value"] <= block[name]["ci_high"]
    assert written["bootstrap"] == {"resamples": 200, "seed": 0, "unit": "patient"}
    assert sum(map(sum, written["confusion_matrix"])) == 12
    # The 6 positive test slices carry lesion masks: localisation is measured for both maps.
    assert written["localisation"]["n"] == 6
    for method in ("attention", "gradcam"):
        assert 0.0 <= written["localisation"][method]["energy_in_mask"]["value"] <= 1.0

    # The operating point is in the model's config, and reaches the target sensitivity on validation.
    config = json.loads((trained_run / "best" / "config.json").read_text())
    assert config["decision_threshold"] == pytest.approx(written["threshold"]) == pytest.approx(metrics["threshold"])
    assert "auto_map" in config
    model, processor = load_model(model_dir)
    dataset_dict, info = load_prepared(signal_dataset)
    validation = predict_probabilities(model, model_inputs(dataset_dict, info, processor)["validation"])
    labels = np.asarray(dataset_dict["validation"]["label"])
    assert recall_score(labels, validation >= config["decision_threshold"]) >= 0.95

    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and set(rows[0]) == {"index", "source", "patient_id", "label", "probability", "prediction"}
    assert [int(r["prediction"]) for r in rows] == [int(float(r["probability"]) >= written["threshold"]) for r in rows]
    report = (out / "report.md").read_text()
    for figure in ("roc_curve.png", "confusion_matrix.png", "reliability_diagram.png"):
        assert f"]({figure})" in report
        with Image.open(out / figure) as image:
            assert min(image.size) > 200
    assert f"{written['threshold']:.4f}" in report and "Patient level" in report


def test_evaluate_refuses_a_dataset_without_the_split(trained_run, tmp_path, capsys):
    from training.evaluate import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--model", f"{trained_run}/best", "--data", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "e")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "prepare_info.json" in error and "\n" not in error and "Traceback" not in error
