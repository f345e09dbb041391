"""Training loop: settings resolution, scheduler / early stopping / best-by-AUC driven by a scripted
validation, resume after an interrupted run (exception and SIGKILL), gradient accumulation, bf16 on CPU,
frozen stages under random initialisation, run folders that mean the same from any directory, and the
offline message."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import training.train as train_module
from hub_upload.provenance import read_provenance
from training.train import (
    DEFAULTS,
    ConfigError,
    TrainingProgress,
    build_model,
    choose_frozen_stages,
    main,
    parse_args,
    resolve_config,
    train,
)

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]

# frozen_stages left unset: from random initialisation it defaults to 0 (choose_frozen_stages).
TINY = {"backbone": "resnet10t", "pretrained_backbone": False, "image_size": 32, "batch_size": 8, "lr": 1e-3}


def same_tensors(path_a, path_b) -> bool:
    a, b = load_file(path_a), load_file(path_b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def history_without_time(run: Path):
    history = json.loads((run / "history.json").read_text())
    return history["best_epoch"], [{k: v for k, v in e.items() if k != "time_s"} for e in history["epochs"]]


@pytest.fixture(scope="module")
def straight_run(signal_dataset, tmp_path_factory):
    """Three uninterrupted epochs of TINY: the reference for the resume tests."""
    return Path(train({**TINY, "data": signal_dataset, "epochs": 3, "output_dir": tmp_path_factory.mktemp("straight")}))


def test_paper_yaml_is_the_papers_protocol_and_cli_flags_override_it(tmp_path):
    paper_yaml = os.path.join(train_module.CONFIG_DIR, "paper.yaml")
    paper = resolve_config({"data": "DS", "output_dir": "RUN", "config": paper_yaml})
    assert paper == {**DEFAULTS, "data": "DS", "output_dir": "RUN"}
    assert choose_frozen_stages(paper)[0] == 2  # with ImageNet weights: the paper's stem + stages 1-2
    protocol = ("backbone", "attention", "image_size", "epochs", "batch_size")
    assert tuple(paper[k] for k in protocol) == ("resnet50", "dual", 224, 30, 32)
    optimisation = ("lr", "weight_decay", "lr_factor", "lr_patience", "early_stopping_patience")
    assert tuple(paper[k] for k in optimisation) == (1e-4, 1e-5, 0.5, 5, 10)
    small_yaml = os.path.join(train_module.CONFIG_DIR, "cpu_small.yaml")
    small = resolve_config({"data": "DS", "output_dir": "RUN", "config": small_yaml, "epochs": 3, "lr": None})
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


def test_resume_after_an_interruption_matches_an_uninterrupted_run(straight_run, signal_dataset, tmp_path, monkeypatch):
    settings = {**TINY, "data": signal_dataset, "epochs": 3}
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

    assert history_without_time(resumed) == history_without_time(straight_run)
    for folder in ("state", "best"):
        assert same_tensors(straight_run / folder / "model.safetensors", resumed / folder / "model.safetensors")


# Runs training.train with Adam.step patched to SIGKILL the process right after optimizer step
# KILL_AFTER_STEP: the weights in memory have moved past the last checkpoint, as in a real kill.
KILL_DRIVER = """
import os, signal, sys
import torch
kill_after, steps = int(os.environ["KILL_AFTER_STEP"]), []
adam_step = torch.optim.Adam.step
def step_then_die(self, *args, **kwargs):
    result = adam_step(self, *args, **kwargs)
    steps.append(1)
    if len(steps) == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
torch.optim.Adam.step = step_then_die
from training.train import main
main(sys.argv[1:])
"""


def test_sigkill_in_the_middle_of_an_epoch_then_resume_matches_an_uninterrupted_run(straight_run, signal_dataset,
                                                                                    tmp_path):
    run = tmp_path / "killed"
    arguments = ["--data", str(signal_dataset), "--output-dir", str(run), "--backbone", "resnet10t",
                 "--no-pretrained-backbone", "--image-size", "32", "--batch-size", "8", "--lr", "1e-3", "--epochs", "3"]
    # 24 training slices in batches of 8: 3 optimizer steps per epoch; step 5 is the middle of epoch 2.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "KILL_AFTER_STEP": "5"}
    killed = subprocess.run([sys.executable, "-c", KILL_DRIVER, *arguments], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert "epoch 1:" in killed.stdout and "epoch 2:" not in killed.stdout
    assert len(json.loads((run / "history.json").read_text())["epochs"]) == 1

    resumed = Path(main([*arguments, "--resume"]))
    assert history_without_time(resumed) == history_without_time(straight_run)
    for folder in ("state", "best"):
        assert same_tensors(straight_run / folder / "model.safetensors", resumed / folder / "model.safetensors")


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
    best = [progress.record({"epoch": i + 1, "val_auc": auc, "val_loss": loss})
            for i, (auc, loss) in enumerate(entries)]
    assert best == [True, True, True, False, False]
    assert (progress.best_epoch, progress.best_auc) == (3, 1.0)


def test_random_initialisation_freezes_nothing_unless_frozen_stages_is_set():
    random_init = {**DEFAULTS, "pretrained_backbone": False}
    stages, line = choose_frozen_stages(random_init)
    assert stages == 0 and "nothing" in line and "random initialisation" in line and "\n" not in line
    stages, line = choose_frozen_stages({**random_init, "frozen_stages": 1})
    assert stages == 1 and "stem + stages 1-1" in line and "random initial weights" in line
    assert choose_frozen_stages({**DEFAULTS, "frozen_stages": 0})[0] == 0
    paper_without_imagenet = resolve_config({"data": "DS", "output_dir": "RUN", "pretrained_backbone": False,
                                             "config": os.path.join(train_module.CONFIG_DIR, "paper.yaml")})
    assert choose_frozen_stages(paper_without_imagenet)[0] == 0


def test_run_folder_means_the_same_from_another_directory_and_moves_with_its_dataset(signal_dataset, tmp_path,
                                                                                       monkeypatch, capsys):
    work = tmp_path / "work"
    shutil.copytree(signal_dataset, work / "ds")
    info = json.loads((work / "ds" / "prepare_info.json").read_text())
    info["counts"] = {"train": {"slices": 24, "patients": 12, "positives": 12}}
    (work / "ds" / "prepare_info.json").write_text(json.dumps(info))
    monkeypatch.chdir(work)
    train({**TINY, "data": "ds", "output_dir": "run", "epochs": 1})  # relative paths, as a user types them
    # Random initialisation, frozen_stages unset: nothing frozen, and the run says so.
    assert "frozen backbone stages: nothing (frozen_stages=0, random initialisation" in capsys.readouterr().out
    assert json.loads((work / "run" / "best" / "config.json").read_text())["frozen_stages"] == 0

    stored = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert stored["data"] == str(work / "ds") and stored["output_dir"] == str(work / "run")
    assert stored["data_relative_to_run"] == os.path.join("..", "ds")
    # RUN/config.yaml is valid --config input again (the record-only key is ignored).
    assert resolve_config({"config": str(work / "run" / "config.yaml")})["data"] == str(work / "ds")

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert read_provenance(work / "run" / "best", "real").counts == info["counts"]
    # Run and dataset copied together, the original gone: found beside the run.
    (work).rename(tmp_path / "moved")
    assert read_provenance(tmp_path / "moved" / "run" / "best", "real").counts == info["counts"]


def test_gradient_accumulation_steps_the_optimizer_once_per_n_batches(signal_dataset, tmp_path):
    # 24 training slices in batches of 4: 6 batches per epoch; accumulating 2 -> 3 optimizer steps per epoch.
    run = Path(train({**TINY, "data": signal_dataset, "output_dir": tmp_path / "run", "epochs": 2, "batch_size": 4,
                      "gradient_accumulation_steps": 2}))
    optimizer_state = torch.load(run / "state" / "optimizer.bin", weights_only=True)["state"]
    assert {int(state["step"]) for state in optimizer_state.values()} == {2 * 3}


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate keeps one process-wide state whose mixed precision cannot change once set: reset it
    (as accelerate's own tests do) so this test can use bf16 and the next ones fp32 again."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_bf16_on_cpu_runs_the_model_in_bfloat16_and_saves_float32_weights(signal_dataset, tmp_path, monkeypatch):
    output_dtypes = set()
    real_build_model = train_module.build_model

    def build_model_recording_dtypes(config):
        model = real_build_model(config)
        classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        classifier.register_forward_hook(lambda module, inputs, output: output_dtypes.add(output.dtype))
        return model

    monkeypatch.setattr(train_module, "build_model", build_model_recording_dtypes)
    run = Path(train({**TINY, "data": signal_dataset, "output_dir": tmp_path / "run", "epochs": 1,
                      "mixed_precision": "bf16"}))
    assert output_dtypes == {torch.bfloat16}
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert len(history) == 1 and all(torch.isfinite(torch.tensor(history[0][k])) for k in ("train_loss", "val_loss"))
    saved = load_file(run / "best" / "model.safetensors")
    assert {tensor.dtype for tensor in saved.values()} <= {torch.float32, torch.int64}


def test_attention_loss_weight_trains_with_the_lesion_masks(signal_dataset, tmp_path, monkeypatch):
    masks_seen = {}
    real_build_model = train_module.build_model

    def build_model_recording_masks(config):
        model = real_build_model(config)
        forward = model.forward

        def forward_recording(*args, **kwargs):
            if model.training:
                masks_seen.setdefault(config["attention_loss_weight"], []).append(kwargs.get("lesion_mask"))
            return forward(*args, **kwargs)

        model.forward = forward_recording
        return model

    monkeypatch.setattr(train_module, "build_model", build_model_recording_masks)
    runs = {weight: Path(train({**TINY, "data": signal_dataset, "output_dir": tmp_path / str(weight), "epochs": 1,
                                "attention_loss_weight": weight}))
            for weight in (0.0, 0.5)}
    assert all(mask is None for mask in masks_seen[0.0])
    assert [tuple(mask.shape) for mask in masks_seen[0.5]] == [(8, 32, 32)] * 3
    assert json.loads((runs[0.5] / "best" / "config.json").read_text())["attention_loss_weight"] == 0.5
    # Same seed, same batches and augmentation draws: only the supervision term tells the two runs apart.
    losses = {w: json.loads((run / "history.json").read_text())["epochs"][0]["train_loss"] for w, run in runs.items()}
    assert losses[0.5] != losses[0.0]

    without_masks = tmp_path / "no_masks"
    import datasets

    datasets.load_from_disk(str(signal_dataset)).remove_columns(["mask", "has_mask"]).save_to_disk(str(without_masks))
    shutil.copy(signal_dataset / "prepare_info.json", without_masks)
    with pytest.raises(ConfigError, match="needs lesion masks"):
        train({**TINY, "data": without_masks, "output_dir": tmp_path / "refused", "attention_loss_weight": 0.5})


def test_checkpoint_every_n_epochs_and_after_the_last(signal_dataset, tmp_path, monkeypatch):
    from accelerate import Accelerator

    states_saved_after = []
    real_save_state = Accelerator.save_state
    real_save_checkpoint = train_module.save_checkpoint

    def save_checkpoint_recording(accelerator, model, processor, progress, *args):
        epoch = len(progress.history)
        monkeypatch.setattr(Accelerator, "save_state",
                            lambda self, *a, **k: (states_saved_after.append(epoch), real_save_state(self, *a, **k)))
        return real_save_checkpoint(accelerator, model, processor, progress, *args)

    monkeypatch.setattr(train_module, "save_checkpoint", save_checkpoint_recording)
    train({**TINY, "data": signal_dataset, "output_dir": tmp_path / "run", "epochs": 3, "checkpoint_every": 2})
    assert states_saved_after == [2, 3]
    with pytest.raises(ConfigError, match="checkpoint_every"):
        resolve_config({"data": "DS", "output_dir": "RUN", "checkpoint_every": 0})


def test_spatial_variant_flags_reach_the_saved_config_and_a_bad_one_is_one_line(signal_dataset, tmp_path, capsys):
    tiny_flags = ["--backbone", "resnet10t", "--no-pretrained-backbone", "--image-size", "32", "--batch-size", "8",
                  "--epochs", "1", "--data", str(signal_dataset)]
    variant = ["--spatial-attention-stages", "3", "--spatial-gate", "conv_bn", "--spatial-padding", "replicate",
               "--spatial-kernel-size", "3"]
    run = Path(main([*tiny_flags, "--output-dir", str(tmp_path / "variant"), *variant]))
    saved = json.loads((run / "best" / "config.json").read_text())
    assert (saved["spatial_attention_stages"], saved["spatial_gate"], saved["spatial_padding"],
            saved["spatial_kernel_size"]) == ([3], "conv_bn", "replicate", 3)
    # Unset, they are the paper's: stage 4, conv, zero padding, 7 x 7.
    paper = resolve_config({"data": "DS", "output_dir": "RUN"})
    assert (paper["spatial_attention_stages"], paper["spatial_gate"], paper["spatial_padding"],
            paper["spatial_kernel_size"]) == ([4], "conv", "zeros", 7)

    capsys.readouterr()  # the first run's progress bars
    with pytest.raises(SystemExit) as exit_info:
        main([*tiny_flags, "--output-dir", str(tmp_path / "bad"), "--spatial-kernel-size", "4"])
    assert exit_info.value.code == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1 and "spatial_kernel_size" in error_lines[0]


def test_spatial_attention_stages_from_the_command_line_and_from_yaml(tmp_path):
    """Text such as the command line's "3+4" is parsed here, not by the model config; YAML's `3` and
    `[3, 4]` reach the config as they are."""
    settings = {"data": "DS", "output_dir": "RUN", "backbone": "resnet10t", "pretrained_backbone": False,
                "frozen_stages": 0}
    for text, stages in (("4", [4]), ("3", [3]), ("3+4", [3, 4]), ("4+3", [3, 4])):
        arguments = parse_args(["--data", "DS", "--output-dir", "RUN", "--spatial-attention-stages", text])
        assert resolve_config(arguments)["spatial_attention_stages"] == stages
    with pytest.raises(ConfigError, match=r"^`spatial_attention_stages` are stage numbers .* got '3,4'$"):
        resolve_config({**settings, "spatial_attention_stages": "3,4"})

    for written, stages in (("3", [3]), ("[3, 4]", [3, 4]), ("'3+4'", [3, 4])):
        path = tmp_path / "stages.yaml"
        path.write_text(f"spatial_attention_stages: {written}\n")
        config = resolve_config(settings, str(path))
        assert build_model(config).config.spatial_attention_stages == stages
    with pytest.raises(ConfigError, match=r"^`spatial_attention_stages` must be one of .* got \[2, 3\]\.$"):
        build_model({**config, "spatial_attention_stages": [2, 3]})
