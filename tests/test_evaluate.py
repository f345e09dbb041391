"""Evaluation: metric and interval code against hand-computed values, the operating point, and an
end-to-end train -> evaluate run on the tiny signal dataset."""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

import training.localisation as localisation_module
from training.localisation import localisation_for_config, localisation_metrics
from training.metrics import (
    binary_confusion_matrix,
    binary_metrics,
    calibration,
    choose_operating_point,
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
    again = metrics_with_intervals(labels, scores, patients, 0.5, resamples=1000, seed=0)
    assert again["accuracy"] == result["accuracy"]
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
    from training.data import load_prepared
    from training.evaluate import load_model, main, model_inputs, predict_probabilities, threshold_text

    model_dir = f"{trained_run}/best"
    out = tmp_path / "eval"
    metrics = main(["--model", model_dir, "--data", str(signal_dataset), "--output-dir", str(out),
                    "--bootstrap-resamples", "200"])
    written = json.loads((out / "metrics.json").read_text())
    assert written["split"] == "test" and written["n"] == 12 and written["n_patients"] == 6
    assert written["bootstrap"] == {"resamples": 200, "seed": 0, "unit": "patient"}
    assert sum(map(sum, written["confusion_matrix"])) == 12
    # The 6 positive test slices carry lesion masks: localisation is measured for both maps.
    assert written["localisation"]["n"] == 6
    for method in ("attention", "gradcam"):
        assert 0.0 <= written["localisation"][method]["energy_in_mask"]["value"] <= 1.0

    # The operating point is in the model's config, and reaches the target sensitivity on validation.
    config = json.loads((trained_run / "best" / "config.json").read_text())
    assert config["decision_threshold"] == written["threshold"] == metrics["threshold"]  # every digit
    assert config["threshold_note"] == written["operating_point"]["note"]
    assert ("saturated" in config["threshold_note"]) and "\n" not in config["threshold_note"]
    assert "auto_map" in config
    # The measured localisation is stored with the weights, in the config's compact form.
    for method in ("attention", "gradcam"):
        measured = written["localisation"][method]["pointing_game"]
        assert config["localisation"][method] == {
            "pointing_game": measured["value"], "pointing_game_ci": [measured["ci_low"], measured["ci_high"]],
            "energy_in_mask": written["localisation"][method]["energy_in_mask"]["value"], "n_slices": 6,
            "chance": written["localisation"]["pointing_chance"], "split": "test",
            **({"stage": 4} if method == "gradcam" else {}),
        }
    assert "Grad-CAM explains backbone stage 4." in (out / "report.md").read_text()
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
    assert f"Previous threshold 0.5000; new threshold {threshold_text(written['threshold'])}" in report
    assert written["operating_point"]["note"] in report and "Patient level" in report

    # The intervals are the 2.5th and 97.5th percentiles of the metric over patient resamples, recomputed
    # here with scikit-learn from predictions.csv (a percentile interval need not contain the point estimate).
    labels = np.array([int(r["label"]) for r in rows])
    scores = np.array([float(r["probability"]) for r in rows])
    weights = patient_bootstrap_weights([r["patient_id"] for r in rows], 200, seed=0)
    accuracy = [accuracy_score(labels, scores >= written["threshold"], sample_weight=w) for w in weights]
    assert (written["accuracy"]["ci_low"], written["accuracy"]["ci_high"]) == pytest.approx(
        tuple(np.percentile(accuracy, [2.5, 97.5])), abs=1e-6)


def test_evaluate_refuses_a_dataset_without_the_split(trained_run, signal_dataset, tmp_path, capsys):
    import datasets

    from training.evaluate import main

    no_test = tmp_path / "no_test"
    splits = datasets.load_from_disk(str(signal_dataset))
    datasets.DatasetDict({"train": splits["train"], "validation": splits["validation"]}).save_to_disk(str(no_test))
    shutil.copy(signal_dataset / "prepare_info.json", no_test)
    capsys.readouterr()  # the progress bars of saving it
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", f"{trained_run}/best", "--data", str(no_test), "--split", "test",
              "--output-dir", str(tmp_path / "e")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error == f"error: {no_test} has no 'test' split (has ['train', 'validation'])"
    assert not (tmp_path / "e").exists()


def test_evaluate_refuses_a_missing_dataset_in_one_line(trained_run, tmp_path, capsys):
    from training.evaluate import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--model", f"{trained_run}/best", "--data", str(tmp_path / "missing"),
              "--output-dir", str(tmp_path / "e")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "prepare_info.json" in error
    assert "\n" not in error and "Traceback" not in error


def test_a_crash_while_writing_config_json_leaves_the_old_one_loadable(trained_run, signal_dataset, tmp_path,
                                                                       monkeypatch):
    from training.evaluate import evaluate, load_model

    model_dir = tmp_path / "model"
    shutil.copytree(trained_run / "best", model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["decision_threshold"] = 0.25
    (model_dir / "config.json").write_text(json.dumps(config))
    before = (model_dir / "config.json").read_bytes()

    from modeling import DualAttentionResNetConfig

    real_to_json_string = DualAttentionResNetConfig.to_json_string

    def crash_while_writing(self, *args, **kwargs):
        # Writing a config file passes use_diff; repr() and logging call it without arguments.
        if "use_diff" in kwargs:
            raise OSError(28, "No space left on device")
        return real_to_json_string(self, *args, **kwargs)

    # The crash comes while the new config is being written: after the file to write has been opened.
    monkeypatch.setattr(DualAttentionResNetConfig, "to_json_string", crash_while_writing)
    with pytest.raises(OSError, match="No space left"):
        evaluate(model_dir, signal_dataset, resamples=20)
    monkeypatch.undo()
    assert (model_dir / "config.json").read_bytes() == before
    assert sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".")) == []  # no temporary left
    assert load_model(model_dir)[0].config.decision_threshold == 0.25

    metrics = evaluate(model_dir, signal_dataset, resamples=20, output_dir=tmp_path / "eval")
    assert metrics["operating_point"]["previous_threshold"] == 0.25
    assert load_model(model_dir)[0].config.decision_threshold == metrics["threshold"]
    assert "Previous threshold 0.2500; new threshold" in (tmp_path / "eval" / "report.md").read_text()


def sigmoid(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-logit))


def test_operating_point_on_a_saturated_validation_is_the_logit_midpoint():
    from training.evaluate import threshold_text

    # Negatives at logits -2 and 0, positives at 4 and 6: midway between 0 and 4 is logit 2.
    chosen = choose_operating_point([0, 0, 1, 1], [sigmoid(-2), sigmoid(0), sigmoid(4), sigmoid(6)])
    assert chosen["saturated"] and chosen["threshold"] == pytest.approx(sigmoid(2), abs=1e-12)
    assert "saturated" in chosen["note"] and "0.5" in chosen["note"] and "0.982014" in chosen["note"]
    # A confident model (negatives up to logit 10, positives from 20): logit 15, shown with the digits it needs.
    confident = choose_operating_point([0, 1], [sigmoid(10), sigmoid(20)])
    assert confident["threshold"] == pytest.approx(sigmoid(15), abs=1e-13)
    assert threshold_text(confident["threshold"]) == "0.999999694"
    assert threshold_text(0.9963) == "0.9963" and threshold_text(0.5) == "0.5000"
    # Overlapping scores: the highest threshold reaching 95 % sensitivity, as before.
    overlapping = choose_operating_point(LABELS, SCORES)
    assert not overlapping["saturated"] and overlapping["threshold"] == operating_point(LABELS, SCORES)
    assert overlapping["threshold"] == 0.3 and "not saturated" in overlapping["note"]


def test_localisation_for_the_config_from_hand_made_maps(monkeypatch):
    # Three 8 x 8 positive slices, lesion = the 2 x 2 top-left corner. Slices 0 and 1 (patient A) peak in
    # the lesion, slice 2 (patient B) at the far corner. Energy in mask: 1/1, 1/1.5, 0.25/1.25.
    masks = torch.zeros(3, 8, 8)
    masks[:, :2, :2] = 1
    maps = torch.zeros(3, 8, 8)
    maps[0, 0, 0] = 1.0
    maps[1, 1, 1], maps[1, 5, 5] = 1.0, 0.5
    maps[2, 7, 7], maps[2, 0, 1] = 1.0, 0.25
    monkeypatch.setattr(localisation_module, "explain", lambda model, pixels: {"attention": maps, "gradcam": None})
    result = localisation_metrics(None, torch.zeros(3, 3, 8, 8), masks, patient_ids=["A", "A", "B"], resamples=500)
    stored = localisation_for_config(result, "test")
    # Gradcam was not evaluated, so it is absent. Resampling 2 patients gives 1, 2/3 or 0 (chance 1/4, 1/2,
    # 1/4): the 95 % interval is [0, 1] for any seed. The tolerance (0.03 x 8 px) is below a pixel, so a
    # random point hits with chance 4/64.
    assert stored == {"attention": {
        "pointing_game": pytest.approx(2 / 3), "pointing_game_ci": [0.0, 1.0],
        "energy_in_mask": pytest.approx((1 + 1 / 1.5 + 0.2) / 3), "n_slices": 3, "chance": 4 / 64, "split": "test",
    }}


def test_evaluate_can_move_gradcam_to_stage_3_and_stores_it_with_its_numbers(trained_run, signal_dataset, tmp_path):
    from training.evaluate import main

    model_dir = tmp_path / "best"
    shutil.copytree(trained_run / "best", model_dir)
    main(["--model", str(model_dir), "--data", str(signal_dataset), "--output-dir", str(tmp_path / "eval"),
          "--bootstrap-resamples", "50", "--gradcam-stage", "3"])
    config = json.loads((model_dir / "config.json").read_text())
    assert config["gradcam_stage"] == 3 and config["localisation"]["gradcam"]["stage"] == 3
    assert "Grad-CAM explains backbone stage 3." in (tmp_path / "eval" / "report.md").read_text()
