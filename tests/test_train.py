"""Training loop: settings resolution, scheduler / early stopping / best-by-AUC driven by a scripted
validation, resume after an interrupted run, and the offline message."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import training.train as train_module
from training.train import DEFAULTS, ConfigError, TrainingProgress, main, resolve_config, train

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"backbone": "resnet10t", "pretrained_backbone": False, "frozen_stages": 0, "image_size": 32,
        "batch_size": 8, "lr": 1e-3}


def test_paper_yaml_is_the_papers_protocol_and_cli_flags_override_it(tmp_path):
    paper = resolve_config({"data": "DS", "output_dir": "RUN", "config": train_module.os.path.join(train_module.CONFIG_DIR, "paper.yaml")})
    assert paper == {**DEFAULTS, "data": "DS", "output_dir": "RUN"}
    assert (paper["backbone"], paper["attention"], paper["image_size"], paper["epochs"], paper["batch_size"]) == ("resnet50", "dual", 224, 30, 32)
    assert (paper["lr"], paper["weight_decay"], paper["lr_factor"], paper["lr_patience"], paper["early_stopping_patience"]) == (1e-4, 1e-5, 0.5, 5, 10)
    small = resolve_config({"data": "DS", "output_dir": "RUN", "config": train_module.os.path.join(train_module.CONFIG_DIR, "cpu_small.yaml"), "epochs": 3, "lr": None})
    assert small["epochs"] == 3 and small["lr"] == 1e-3 and small["pretrained_backbone"] is False
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"learning_rate": 0.1}))
    with pytest.raises(ConfigError, match="learning_rate"):
        resolve_config({"data": "DS", "output_dir": "RUN", "config": str(bad)})
    with pytest.raises(ConfigError, match="--data"):
        resolve_config({"output_dir": "RUN"})


def test_scripted_validation_drives_lr_halving_early_stopping_and_best_by_auc(signal_dataset, tmp_path, monkeypatch):
    # Validation loss improves until epoch 2, then plateaus; AUC peaks at epoch 4 (after the loss minimum).
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95]
    aucs = [0.5, 0.6, 0.7, 0.9, 0.8, 0.85, 0.8, 0.8]
    snapshots = []

    def scripted_validate(model, loader, accelerator):
        epoch = len(snapshots)
        snapshots.append({k: v.clone() for k, v in accelerator.unwrap_model(model).state_dict().items()})
        return {"val_loss": losses[epoch], "val_auc": aucs[epoch]}

    monkeypatch.setattr(train_module, "validate", scripted_validate)
    run = Path(train({**TINY, "data": signal_dataset, "output_dir": tmp_path / "run", "epochs": 8,
                      "lr_patience": 2, "early_stopping_patience": 4}))
    history = json.loads((run / "history.json").read_text())
    epochs = history["epochs"]
    # ReduceLROnPlateau(patience 2): epochs 3, 4, 5 do not beat 0.9 -> halved after epoch 5.
    assert [e["lr"] for e in epochs] == [1e-3] * 4 + [5e-4] * 2
    # Early stopping (patience 4): 4 epochs without a lower validation loss -> stops after epoch 6.
    assert len(epochs) == 6
    assert history["best_epoch"] == 4
    best = load_file(run / "best" / "model.safetensors")
    at_epoch_4 = snapshots[3]
    assert all(torch.equal(best[k], at_epoch_4[k]) for k in best)
    assert not all(torch.equal(best[k], snapshots[5][k]) for k in best)
    assert (run / "loss_curve.png").stat().st_size > 0
    assert yaml.safe_load((run / "config.yaml").read_text())["lr_patience"] == 2


def test_resume_after_an_interruption_matches_an_uninterrupted_run(signal_dataset, tmp_path, monkeypatch):
    settings = {**TINY, "data": signal_dataset, "epochs": 3}
    straight = Path(train({**settings, "output_dir": tmp_path / "straight"}))

    real_validate = train_module.validate
    calls = []

    def crash_in_epoch_3(model, loader, accelerator):
        calls.append(1)
        if len(calls) == 3:  # after epoch 3's training steps, before its checkpoint: like a kill
            raise KeyboardInterrupt
        return real_validate(model, loader, accelerator)

    monkeypatch.setattr(train_module, "validate", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train({**settings, "output_dir": tmp_path / "resumed"})
    monkeypatch.setattr(train_module, "validate", real_validate)
    assert len(json.loads((tmp_path / "resumed" / "history.json").read_text())["epochs"]) == 2
    resumed = Path(train({**settings, "output_dir": tmp_path / "resumed", "resume": True}))

    def without_time(path):
        history = json.loads((path / "history.json").read_text())
        return history["best_epoch"], [{k: v for k, v in e.items() if k != "time_s"} for e in history["epochs"]]

    assert without_time(resumed) == without_time(straight)
    for folder in ("state", "best"):
        a, b = load_file(straight / folder / "model.safetensors"), load_file(resumed / folder / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_offline_imagenet_init_fails_with_one_clear_line(signal_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(signal_dataset), "--output-dir", str(tmp_path / "run"), "--backbone", "resnet10t",
              "--image-size", "32", "--epochs", "1"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error:") and "--no-pretrained-backbone" in error and "--backbone-weights" in error
    with pytest.raises(SystemExit):
        main(["--data", str(signal_dataset), "--output-dir", str(tmp_path / "run"), "--backbone", "resnet10t",
              "--backbone-weights", str(tmp_path / "missing.safetensors")])
    error = capsys.readouterr().err
    assert "missing.safetensors" in error.strip().splitlines()[-1] and "Traceback" not in error


def test_best_epoch_ties_on_auc_go_to_the_lower_validation_loss():
    progress = TrainingProgress()
    entries = [(0.9, 0.5), (1.0, 0.8), (1.0, 0.3), (1.0, 0.4), (0.95, 0.1)]  # (val AUC, val loss) per epoch
    best = [progress.record({"epoch": i + 1, "val_auc": auc, "val_loss": loss}) for i, (auc, loss) in enumerate(entries)]
    assert best == [True, True, True, False, False]
    assert (progress.best_epoch, progress.best_auc) == (3, 1.0)
