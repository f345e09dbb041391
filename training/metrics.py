"""Classification metrics with patient-level bootstrap intervals, calibration and an operating point.

Every metric comes from scikit-learn. Intervals resample patients, not slices: slices of one patient
are correlated, and resampling them independently would give intervals that are too narrow.
"""

import math
from typing import Dict

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

METRIC_NAMES = ("accuracy", "precision", "recall", "specificity", "f1", "auc_roc")


def binary_metrics(labels, scores, threshold: float) -> Dict[str, float]:
    """The six headline metrics for `labels` `(n,)` in {0, 1} and `scores` `(n,)` in [0, 1].

    A score at or above `threshold` is a positive call. AUC is NaN when only one class is present.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    predictions = (scores >= threshold).astype(int)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "precision": float(precision_score(labels, predictions, zero_division=0)),
        "recall": float(recall_score(labels, predictions, zero_division=0)),
        "specificity": float(recall_score(labels, predictions, pos_label=0, zero_division=0)),
        "f1": float(f1_score(labels, predictions, zero_division=0)),
        "auc_roc": float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else float("nan"),
    }


def binary_confusion_matrix(labels, scores, threshold: float) -> list:
    """`[[tn, fp], [fn, tp]]` as plain ints."""
    predictions = (np.asarray(scores) >= threshold).astype(int)
    return confusion_matrix(labels, predictions, labels=[0, 1]).tolist()


def patient_scores(labels, scores, patient_ids):
    """Slice level -> patient level: a patient is positive if any slice is, its score the max over slices.

    Returns `(labels (p,), scores (p,), patient_ids (p,))`, patients sorted by id.
    """
    patient_ids = np.asarray(patient_ids)
    unique, inverse = np.unique(patient_ids, return_inverse=True)
    patient_labels = np.zeros(len(unique), dtype=int)
    patient_max = np.full(len(unique), -np.inf)
    np.maximum.at(patient_labels, inverse, np.asarray(labels, dtype=int))
    np.maximum.at(patient_max, inverse, np.asarray(scores, dtype=np.float64))
    return patient_labels, patient_max, unique


def patient_bootstrap_weights(patient_ids, resamples: int, seed: int) -> np.ndarray:
    """`(resamples, n)` slice weights: each resample draws patients with replacement, and every slice
    counts as often as its patient was drawn. The same seed gives the same draws, so two models scored
    on the same slices get paired resamples."""
    _, inverse = np.unique(np.asarray(patient_ids), return_inverse=True)
    n_patients = inverse.max() + 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_patients, size=(resamples, n_patients))
    counts = np.stack([np.bincount(row, minlength=n_patients) for row in draws])
    return counts[:, inverse].astype(np.float64)


def percentile_interval(values, level: float = 0.95):
    """Percentile interval of bootstrap `values`, ignoring NaN (resamples where a metric is undefined)."""
    values = np.asarray(values, dtype=np.float64)
    if np.all(np.isnan(values)):
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.nanpercentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def _ratio(numerator, denominator):
    """numerator / denominator, NaN where the denominator is 0: a resample in which a metric is
    undefined (e.g. precision with no positive calls) is left out of the interval, not counted as 0."""
    return np.divide(numerator, denominator, out=np.full_like(numerator, np.nan), where=denominator > 0)


def weighted_threshold_metrics(labels, scores, threshold: float, weights) -> Dict[str, np.ndarray]:
    """Accuracy, precision, recall, specificity and F1 for many weightings at once.

    `weights` `(r, n)` -> each metric `(r,)`. Equal to scikit-learn's functions with `sample_weight`
    wherever the metric is defined (tests check this); vectorised because calling scikit-learn 6 x 1000
    times per interval set takes tens of seconds.
    """
    labels = np.asarray(labels).astype(bool)
    called = np.asarray(scores) >= threshold
    tp = weights @ (labels & called)
    fp = weights @ (~labels & called)
    fn = weights @ (labels & ~called)
    tn = weights @ (~labels & ~called)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "precision": precision,
        "recall": recall,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def weighted_auc(labels, scores, weights) -> np.ndarray:
    """ROC AUC for many weightings at once: `weights` `(r, n)` -> `(r,)`, NaN where a class is absent.

    The weighted Mann-Whitney statistic (ties count one half), which equals the area under
    scikit-learn's weighted ROC curve. Scores are grouped by unique value so ties are exact.
    """
    labels = np.asarray(labels).astype(bool)
    _, group = np.unique(np.asarray(scores), return_inverse=True)
    n_groups = group.max() + 1
    result = np.full(len(weights), np.nan)
    for r, w in enumerate(weights):
        positive = np.bincount(group[labels], weights=w[labels], minlength=n_groups)
        negative = np.bincount(group[~labels], weights=w[~labels], minlength=n_groups)
        total = positive.sum() * negative.sum()
        if total > 0:
            negative_below = np.cumsum(negative) - negative
            result[r] = np.sum(positive * (negative_below + 0.5 * negative)) / total
    return result


def metrics_with_intervals(
    labels, scores, patient_ids, threshold: float, resamples: int = 1000, seed: int = 0
) -> Dict[str, Dict[str, float]]:
    """`{metric: {"value", "ci_low", "ci_high"}}`: scikit-learn point estimates and 95 %
    patient-bootstrap intervals."""
    point = binary_metrics(labels, scores, threshold)
    weights = patient_bootstrap_weights(patient_ids, resamples, seed)
    draws = weighted_threshold_metrics(labels, scores, threshold, weights)
    draws["auc_roc"] = weighted_auc(labels, scores, weights)
    result = {}
    for name in METRIC_NAMES:
        low, high = percentile_interval(draws[name])
        result[name] = {"value": float(point[name]), "ci_low": low, "ci_high": high}
    return result


def paired_auc_difference(
    labels, scores_a, scores_b, patient_ids, resamples: int = 1000, seed: int = 0
) -> Dict[str, float]:
    """AUC(a) - AUC(b) on the same slices, with a paired patient bootstrap (same resamples for both).

    Returns `{"value", "ci_low", "ci_high", "p_value"}`; `p_value` is the two-sided bootstrap p-value
    for "no difference" (twice the smaller share of resamples on either side of zero).
    """
    weights = patient_bootstrap_weights(patient_ids, resamples, seed)
    differences = weighted_auc(labels, scores_a, weights) - weighted_auc(labels, scores_b, weights)
    differences = differences[~np.isnan(differences)]
    value = roc_auc_score(labels, scores_a) - roc_auc_score(labels, scores_b)
    low, high = percentile_interval(differences)
    if len(differences):
        p_value = min(1.0, 2.0 * min(np.mean(differences <= 0), np.mean(differences >= 0)))
    else:
        p_value = float("nan")
    return {"value": float(value), "ci_low": low, "ci_high": high, "p_value": float(p_value)}


def expected_calibration_error(labels, scores, bins: int = 10) -> float:
    """ECE over `bins` equal-width probability bins: sum over bins of (bin share) x |mean score - positive rate|.

    scikit-learn has no ECE; `calibration_curve` gives the per-bin means but not the bin sizes.
    """
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    # Right-closed bins as in sklearn's calibration_curve: a score of exactly 1.0 lands in the last bin.
    index = np.clip(np.digitize(scores, np.linspace(0.0, 1.0, bins + 1)[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            ece += in_bin.mean() * abs(scores[in_bin].mean() - labels[in_bin].mean())
    return float(ece)


def calibration(labels, scores, bins: int = 10) -> Dict[str, float]:
    """`{"ece", "brier"}`."""
    return {
        "ece": expected_calibration_error(labels, scores, bins),
        "brier": float(brier_score_loss(labels, scores)),
    }


def operating_point(labels, scores, target_sensitivity: float = 0.95) -> float:
    """The highest threshold whose sensitivity (recall) on these labels is at least `target_sensitivity`.

    The highest such threshold keeps specificity as high as the sensitivity target allows.
    """
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"`target_sensitivity` must be in (0, 1], got {target_sensitivity!r}.")
    labels = np.asarray(labels)
    if labels.sum() == 0:
        raise ValueError("the operating point needs at least one positive slice in the validation split")
    _, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    first = int(np.argmax(tpr >= target_sensitivity - 1e-12))
    return float(min(1.0, thresholds[first]))



def _logit(probability: float) -> float:
    probability = min(max(probability, 1e-15), 1.0 - 1e-15)  # a saturated sigmoid reads 0.0 or 1.0
    return math.log(probability / (1.0 - probability))


def choose_operating_point(labels, scores, target_sensitivity: float = 0.95) -> Dict[str, object]:
    """The decision threshold for validation `labels` and `scores` (probabilities), and how it was chosen.

    When every positive scores above every negative (validation saturated), any threshold between them
    separates perfectly, and `operating_point` would return the lowest positive score, which sits at
    0.99+ for a confident model and moves with a single slice. Then the threshold is the midpoint, in
    logit space, between the highest negative and the lowest positive score. Otherwise it is
    `operating_point` (the highest threshold reaching `target_sensitivity`).

    Returns `{"threshold": float, "saturated": bool, "note": str}`; `note` is one line for a config.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = scores[labels == 1], scores[labels == 0]
    if len(positives) and len(negatives) and positives.min() > negatives.max():
        highest_negative, lowest_positive = float(negatives.max()), float(positives.min())
        middle = (_logit(highest_negative) + _logit(lowest_positive)) / 2.0
        threshold = 1.0 / (1.0 + math.exp(-middle))
        if not highest_negative < threshold <= lowest_positive:  # both beyond what float64 resolves
            threshold = lowest_positive
        note = (
            f"validation saturated (all {len(positives)} metastatic slices scored above all {len(negatives)} "
            f"non-metastatic ones): threshold midway in logit space between the highest non-metastatic "
            f"({highest_negative:.6g}) and the lowest metastatic ({lowest_positive:.6g}) validation score"
        )
        return {"threshold": threshold, "saturated": True, "note": note}
    threshold = operating_point(labels, scores, target_sensitivity)
    note = (
        f"validation not saturated: the highest threshold reaching sensitivity {target_sensitivity:.2f} "
        f"on the validation split ({len(labels)} slices)"
    )
    return {"threshold": threshold, "saturated": False, "note": note}
