"""Fine-tune the dual-attention ResNet on a prepared dataset with Accelerate: the paper's protocol.

    accelerate launch -m training.train --data DS --output-dir RUN [--config training/configs/paper.yaml]
    python -m training.train --data DS --output-dir RUN [...]          (one process)

Settings resolve in one place, in this order: `DEFAULTS` (the paper's protocol), the YAML file given
with --config, then every flag given on the command line. Writes:

- `RUN/best/`: `save_pretrained` of the model with the best validation AUC, and its processor (window
  and training-split mean/std);
- `RUN/history.json`: per epoch train loss, validation loss, validation AUC, learning rate, seconds;
- `RUN/loss_curve.png`, `RUN/config.yaml` (the resolved settings, paths absolute, plus the dataset's
  path relative to the run folder);
- `RUN/state/`: Accelerate state after every epoch (`--checkpoint-every N`: every N epochs, and after
  the last); `--resume` continues from it after a kill.
"""

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Tuple

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modeling import ATTENTION_MODES, DualAttentionResNetConfig, DualAttentionResNetForImageClassification
from modeling.attention import SPATIAL_GATES, SPATIAL_PADDINGS
from modeling.configuration_dual_attention_resnet import GRADCAM_STAGES
from training.data import BatchAugmentation, load_prepared, processor_from_info, torch_splits

# The paper's protocol (training.paper.PAPER_TITLE); training/configs/paper.yaml spells the same values out.
DEFAULTS = {
    "data": None,
    "output_dir": None,
    "backbone": "resnet50",
    "attention": "dual",
    "frozen_stages": None,  # None: the paper's 2 with ImageNet weights, 0 from random init (choose_frozen_stages)
    "dropout": 0.5,
    "attention_loss_weight": 0.0,  # > 0: supervise the spatial map with lesion masks (not in the paper)
    # The spatial branch's variant (DualAttentionResNetConfig); these four are the paper's.
    "spatial_attention_stages": [4],
    "spatial_gate": "conv",
    "spatial_padding": "zeros",
    "spatial_kernel_size": 7,
    "gradcam_stage": 4,  # the stage Grad-CAM explains: 4 the last (the paper's), 3 a map four times finer
    "pretrained_backbone": True,
    "backbone_weights": None,
    "image_size": 224,
    "augment": True,
    "epochs": 30,
    "batch_size": 32,
    "lr": 1e-4,
    "weight_decay": 1e-5,
    "lr_factor": 0.5,
    "lr_patience": 5,
    "early_stopping_patience": 10,
    "seed": 0,
    "mixed_precision": "no",
    "gradient_accumulation_steps": 1,
    "num_workers": None,  # None: 0 on CPU (the model needs the cores), up to 8 on GPU
    "report_to": None,
    "resume": False,
    "checkpoint_every": 1,  # epochs between saves of RUN/state/ (always after the last epoch)
}
# Written into RUN/config.yaml as absolute paths (run_config_for_disk).
PATH_SETTINGS = ("data", "output_dir", "backbone_weights")
# Written into RUN/config.yaml for the record; ignored when that file is read back as --config.
RECORD_ONLY = ("data_relative_to_run",)
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


class ConfigError(ValueError):
    """A setting that cannot work; `main` prints it as one line."""


class BackboneWeightsError(RuntimeError):
    """ImageNet weights could not be loaded (offline, or a bad --backbone-weights file)."""


def resolve_config(overrides: Optional[dict] = None, config_path: Optional[str] = None) -> dict:
    """DEFAULTS <- YAML file <- `overrides` (None values ignored, so unset CLI flags change nothing).

    `overrides` may itself name the YAML file under the key "config".
    """
    overrides = dict(overrides or {})
    config_path = overrides.pop("config", None) or config_path
    config = dict(DEFAULTS)
    layers = []
    if config_path:
        try:
            with open(config_path) as handle:
                loaded = yaml.safe_load(handle) or {}
            layers.append((config_path, {k: v for k, v in loaded.items() if k not in RECORD_ONLY}))
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"cannot read config {config_path}: {error}") from error
    layers.append(("arguments", {k: v for k, v in overrides.items() if v is not None}))
    for origin, layer in layers:
        unknown = sorted(set(layer) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown} in {origin}; known: {sorted(DEFAULTS)}")
        config.update(layer)
    for key in ("data", "output_dir"):
        if not config[key]:
            raise ConfigError(f"`{key}` is required (--{key.replace('_', '-')})")
    if isinstance(config["spatial_attention_stages"], str):
        config["spatial_attention_stages"] = parse_stages(config["spatial_attention_stages"])
    if not isinstance(config["checkpoint_every"], int) or config["checkpoint_every"] < 1:
        every = config["checkpoint_every"]
        raise ConfigError(f"`checkpoint_every` must be a whole number of epochs >= 1, got {every!r}")
    return config


def parse_stages(text: str) -> list:
    """`spatial_attention_stages` written as text (the command line's, or YAML's "3+4"): "4", "3" or "3+4"
    -> `[4]`, `[3]`, `[3, 4]`. The model config takes ints only and checks which combinations it allows."""
    parts = text.split("+")
    if not all(part.strip().isdigit() for part in parts):
        raise ConfigError(f"`spatial_attention_stages` are stage numbers joined by '+' (4, 3 or 3+4), got {text!r}")
    return sorted(int(part) for part in parts)


def build_model(config: dict) -> DualAttentionResNetForImageClassification:
    """A fresh model for these settings, ImageNet-initialised unless `pretrained_backbone` is false."""
    try:
        model_config = DualAttentionResNetConfig(
            backbone=config["backbone"],
            attention=config["attention"],
            dropout=config["dropout"],
            frozen_stages=config["frozen_stages"],
            image_size=config["image_size"],
            attention_loss_weight=config["attention_loss_weight"],
            spatial_attention_stages=config["spatial_attention_stages"],
            spatial_gate=config["spatial_gate"],
            spatial_padding=config["spatial_padding"],
            spatial_kernel_size=config["spatial_kernel_size"],
            gradcam_stage=config["gradcam_stage"],
        )
    except ValueError as error:  # a bad setting (e.g. spatial_gate): one line, not a traceback
        raise ConfigError(str(error)) from error
    model = DualAttentionResNetForImageClassification(model_config)
    if config["pretrained_backbone"]:
        try:
            model.dual_attention_resnet.load_backbone_weights(config["backbone_weights"])
        except (RuntimeError, FileNotFoundError) as error:
            raise BackboneWeightsError(str(error)) from error
    return model


@dataclass
class TrainingProgress:
    """Everything `--resume` needs besides weights, optimizer, scheduler and RNG states.

    Registered with Accelerate, so `save_state` / `load_state` carry it. Model selection is by
    validation AUC (the paper's), ties going to the lower validation loss (a small validation split
    often reaches AUC 1.0 several times); early stopping watches validation loss, like the LR scheduler.
    """

    history: list = field(default_factory=list)
    best_epoch: int = 0
    best_auc: float = -math.inf
    best_val_loss: float = math.inf
    best_epoch_val_loss: float = math.inf
    epochs_without_improvement: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def record(self, entry: dict) -> bool:
        """Appends one epoch's entry; returns True when it is the new best by validation AUC (then loss)."""
        self.history.append(entry)
        if entry["val_loss"] < self.best_val_loss:
            self.best_val_loss = entry["val_loss"]
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        auc = entry["val_auc"] if not math.isnan(entry["val_auc"]) else -math.inf
        tie_but_lower_loss = auc == self.best_auc and entry["val_loss"] < self.best_epoch_val_loss
        if self.best_epoch == 0 or auc > self.best_auc or tie_but_lower_loss:
            self.best_epoch, self.best_auc, self.best_epoch_val_loss = entry["epoch"], auc, entry["val_loss"]
            return True
        return False

    def should_stop(self, patience: int) -> bool:
        return self.epochs_without_improvement >= patience


def validate(model, loader, accelerator) -> dict:
    """Validation loss (BCE) and AUC over the whole split, each sample counted once across processes."""
    model.eval()
    logits, labels = [], []
    with torch.inference_mode():
        for batch in loader:
            batch_logits = model(pixel_values=batch["pixel_values"]).logits.float().view(-1)
            # gather_for_metrics drops the samples that were repeated to even out the last batch
            batch_logits, batch_labels = accelerator.gather_for_metrics((batch_logits, batch["labels"]))
            logits.append(batch_logits.cpu())
            labels.append(batch_labels.cpu())
    logits, labels = torch.cat(logits), torch.cat(labels)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float()).item()
    both_classes = labels.unique().numel() == 2
    auc = roc_auc_score(labels.numpy(), torch.sigmoid(logits).numpy()) if both_classes else float("nan")
    return {"val_loss": loss, "val_auc": float(auc)}


def sync_buffers(model, accelerator) -> None:
    """Give every process the main process's BatchNorm statistics.

    Each process updates running statistics on its own batches; DDP broadcasts them only before a
    training forward, so without this the processes would validate with different models.
    """
    if accelerator.num_processes > 1:
        for buffer in accelerator.unwrap_model(model).buffers():
            torch.distributed.broadcast(buffer, src=0)


def plot_history(history: list, best_epoch: int, path: str) -> None:
    """Train/validation loss and validation AUC per epoch, best epoch marked."""
    epochs = [entry["epoch"] for entry in history]
    figure = Figure(figsize=(10, 4))
    loss_axis, auc_axis = figure.subplots(1, 2)
    loss_axis.plot(epochs, [e["train_loss"] for e in history], marker="o", label="train")
    loss_axis.plot(epochs, [e["val_loss"] for e in history], marker="o", label="validation")
    loss_axis.set(xlabel="epoch", ylabel="BCE loss", title="Loss")
    loss_axis.legend()
    auc_axis.plot(epochs, [e["val_auc"] for e in history], marker="o", color="tab:green")
    auc_axis.set(xlabel="epoch", ylabel="AUC-ROC", title="Validation AUC", ylim=(0.0, 1.02))
    for axis in (loss_axis, auc_axis):
        axis.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def default_num_workers(device: torch.device) -> int:
    return 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)


def choose_frozen_stages(config: dict) -> Tuple[int, str]:
    """The number of frozen backbone stages, and one line saying what is frozen and why.

    Unset (None), it is the paper's 2 with ImageNet weights, and 0 from random initialisation: frozen
    random layers would keep their random weights for the whole run.
    """
    stages, pretrained = config["frozen_stages"], config["pretrained_backbone"]
    if stages is None:
        stages = 2 if pretrained else 0
        why = "the paper's default with ImageNet weights" if pretrained else (
            "random initialisation, so frozen layers would stay random; --frozen-stages overrides this")
    else:
        why = "as set" + ("; they keep their random initial weights" if stages and not pretrained else "")
    what = f"stem + stages 1-{stages}" if stages else "nothing"
    return stages, f"frozen backbone stages: {what} (frozen_stages={stages}, {why})"


def make_accelerator(config: dict) -> Accelerator:
    return Accelerator(
        mixed_precision=config["mixed_precision"],
        gradient_accumulation_steps=config["gradient_accumulation_steps"],
        log_with=config["report_to"],
        project_dir=os.fspath(config["output_dir"]),
        # Shuffling from seed + epoch: every process agrees, and a resumed run shuffles as an unbroken one.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config["seed"]),
        # ReduceLROnPlateau steps once per epoch on the validation loss, not with the optimizer.
        step_scheduler_with_optimizer=False,
    )


def build_loaders(config: dict, device: torch.device):
    """(train loader, validation loader, the processor to save with the model) for the prepared dataset."""
    dataset_dict, info = load_prepared(config["data"])
    missing = {"train", "validation"} - set(dataset_dict)
    if missing:
        raise ConfigError(f"{config['data']} has no {sorted(missing)} split(s); run training.prepare first")
    supervised = config["attention_loss_weight"] > 0
    if supervised and "mask" not in dataset_dict["train"].column_names:
        raise ConfigError(f"attention_loss_weight > 0 needs lesion masks; {config['data']} has none")
    # augmentation happens in the loop, on whole batches on the device (BatchAugmentation)
    splits = torch_splits(dataset_dict, info, augment=False, image_size=config["image_size"], train_masks=supervised)
    num_workers = config["num_workers"]
    if num_workers is None:
        num_workers = default_num_workers(device)
    options = {
        "batch_size": config["batch_size"],
        "num_workers": num_workers,
        "persistent_workers": num_workers > 0,
        "pin_memory": device.type == "cuda",
    }
    train_loader = DataLoader(splits["train"], shuffle=True, **options)
    val_loader = DataLoader(splits["validation"], shuffle=False, **options)
    return train_loader, val_loader, processor_from_info(info, config["image_size"])


def build_optimizer(model, config: dict, device: torch.device):
    """Adam on the trainable parameters and ReduceLROnPlateau on the validation loss (the paper's).

    Adam is torch's fused implementation where it exists (CPU, CUDA): one kernel for all parameters
    instead of several per tensor, about 5x faster per step for a ResNet-50 on a CPU.
    """
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=config["lr"], weight_decay=config["weight_decay"],
        fused=device.type in ("cpu", "cuda"),
    )
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config["lr_factor"], patience=config["lr_patience"]
    )
    return optimizer, scheduler


def train_one_epoch(model, loader, optimizer, accelerator, augmentation, bar_description: str) -> float:
    """One pass over the training split, each batch through `augmentation` (a `BatchAugmentation`, or
    None), with its lesion masks when the loader gives them (attention supervision); returns the mean
    training loss over all processes' samples."""
    model.train()
    channels_last = accelerator.device.type == "cuda"
    loss_sum = torch.zeros((), device=accelerator.device)
    sample_count = torch.zeros((), device=accelerator.device)
    bar = tqdm(loader, desc=bar_description, disable=not accelerator.is_local_main_process, leave=False)
    for step, batch in enumerate(bar):
        pixel_values, lesion_mask = batch["pixel_values"], batch.get("lesion_mask")
        if augmentation is not None:
            pixel_values, lesion_mask = augmentation(pixel_values, lesion_mask)
        if channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        with accelerator.accumulate(model):
            loss = model(pixel_values=pixel_values, labels=batch["labels"], lesion_mask=lesion_mask).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        loss_sum += loss.detach().float() * len(batch["labels"])
        sample_count += len(batch["labels"])
        if step % 10 == 0:  # .item() waits for the GPU: not on every step
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return (accelerator.reduce(loss_sum) / accelerator.reduce(sample_count)).item()


def save_checkpoint(
    accelerator, model, processor, progress: TrainingProgress, run_dir: str, is_best: bool, save_state: bool
) -> None:
    """`best/` when this epoch is the best so far, `state/` (for --resume) when `save_state`, and
    `history.json`."""
    if is_best and accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(os.path.join(run_dir, "best"))
        processor.save_pretrained(os.path.join(run_dir, "best"))
    if save_state:
        accelerator.save_state(os.path.join(run_dir, "state"))
    if accelerator.is_main_process:
        with open(os.path.join(run_dir, "history.json"), "w") as handle:
            json.dump({"best_epoch": progress.best_epoch, "epochs": progress.history}, handle, indent=2)


def report_epoch(accelerator, entry: dict, is_best: bool) -> None:
    accelerator.log({k: v for k, v in entry.items() if k != "epoch"}, step=entry["epoch"])
    accelerator.print(
        f"epoch {entry['epoch']}: train loss {entry['train_loss']:.4f}, val loss {entry['val_loss']:.4f}, "
        f"val AUC {entry['val_auc']:.4f}, lr {entry['lr']:.2e}, {entry['time_s']:.1f} s"
        + (" (best)" if is_best else "")
    )


def run_config_for_disk(config: dict) -> dict:
    """The resolved settings as RUN/config.yaml stores them: paths absolute, so the run folder means the
    same from any directory, and `data_relative_to_run`, so a run copied together with its dataset
    still finds it."""
    stored = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in config.items()}
    for key in PATH_SETTINGS:
        if stored[key]:
            stored[key] = os.path.abspath(stored[key])
    stored["data_relative_to_run"] = os.path.relpath(stored["data"], stored["output_dir"])
    return stored


def start_run(config: dict, accelerator, progress: TrainingProgress) -> None:
    """Loads `state/` when resuming, writes RUN/config.yaml, starts the trackers."""
    run_dir = os.fspath(config["output_dir"])
    state_dir = os.path.join(run_dir, "state")
    if config["resume"]:
        if os.path.isdir(state_dir):
            accelerator.load_state(state_dir)
            accelerator.print(f"resumed from {state_dir} after epoch {len(progress.history)}")
        else:
            accelerator.print(f"--resume: no saved state in {state_dir}; starting from epoch 1")
    if accelerator.is_main_process:
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "config.yaml"), "w") as handle:
            yaml.safe_dump(run_config_for_disk(config), handle, sort_keys=False)
    if config["report_to"]:
        plain = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}
        accelerator.init_trackers("train", config=plain)


def finish_run(accelerator, progress: TrainingProgress, run_dir: str, patience: int) -> None:
    if progress.should_stop(patience):
        accelerator.print(
            f"early stopping: validation loss has not improved for {progress.epochs_without_improvement} epochs"
        )
    if accelerator.is_main_process and progress.history:
        # once, at the end: a figure per epoch costs more than a fast GPU epoch
        plot_history(progress.history, progress.best_epoch, os.path.join(run_dir, "loss_curve.png"))
    best_dir = os.path.join(run_dir, "best")
    accelerator.print(f"best epoch {progress.best_epoch} (val AUC {progress.best_auc:.4f}) -> {best_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()


def train(config) -> str:
    """Runs the protocol described by `config` (a dict of `DEFAULTS` keys, optionally with "config":
    a YAML path) and returns the run folder, which holds `best/`."""
    config = resolve_config(config)
    config["frozen_stages"], frozen_note = choose_frozen_stages(config)
    run_dir = os.fspath(config["output_dir"])
    accelerator = make_accelerator(config)
    accelerator.print(frozen_note)
    set_seed(config["seed"])
    train_loader, val_loader, processor = build_loaders(config, accelerator.device)
    augmentation = None
    if config["augment"]:
        augmentation = BatchAugmentation(processor.image_mean, processor.image_std).to(accelerator.device)
    model = build_model(config)
    if accelerator.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    optimizer, scheduler = build_optimizer(model, config, accelerator.device)
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler
    )
    progress = TrainingProgress()
    accelerator.register_for_checkpointing(progress)
    start_run(config, accelerator, progress)

    for epoch in range(len(progress.history) + 1, config["epochs"] + 1):
        if progress.should_stop(config["early_stopping_patience"]):
            break
        started = time.perf_counter()
        train_loader.set_epoch(epoch)
        description = f"epoch {epoch}/{config['epochs']}"
        train_loss = train_one_epoch(model, train_loader, optimizer, accelerator, augmentation, description)
        sync_buffers(model, accelerator)
        entry = {"epoch": epoch, "train_loss": train_loss, **validate(model, val_loader, accelerator)}
        scheduler.step(entry["val_loss"])
        entry["lr"] = optimizer.param_groups[0]["lr"]
        entry["time_s"] = time.perf_counter() - started
        is_best = progress.record(entry)
        last = epoch == config["epochs"] or progress.should_stop(config["early_stopping_patience"])
        save_state = last or epoch % config["checkpoint_every"] == 0
        save_checkpoint(accelerator, model, processor, progress, run_dir, is_best, save_state)
        report_epoch(accelerator, entry, is_best)
    finish_run(accelerator, progress, run_dir, config["early_stopping_patience"])
    return run_dir


def parse_args(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Every default is None: unset flags leave DEFAULTS and the YAML file in charge (resolve_config).
    parser.add_argument("--data", help="prepared dataset folder (training.prepare --output)")
    parser.add_argument("--output-dir", help="run folder: best/, history.json, loss_curve.png, state/")
    parser.add_argument("--config", help=f"YAML settings, e.g. {os.path.join(CONFIG_DIR, 'paper.yaml')}")
    parser.add_argument("--backbone", help="timm model name (default resnet50)")
    parser.add_argument("--attention", choices=ATTENTION_MODES)
    parser.add_argument("--frozen-stages", type=int,
                        help="backbone stages frozen, stem included (default 2 with ImageNet weights, 0 random init)")
    parser.add_argument("--dropout", type=float)
    parser.add_argument("--attention-loss-weight", type=float,
                        help="weight of the spatial-attention supervision by lesion masks (default 0: off)")
    parser.add_argument("--spatial-attention-stages",
                        help="stage(s) of the spatial branch: 4 (the paper's), 3 or 3+4")
    parser.add_argument("--spatial-gate", choices=SPATIAL_GATES, help="conv (the paper's) or conv_bn (CBAM's)")
    parser.add_argument("--spatial-padding", choices=SPATIAL_PADDINGS,
                        help="padding of the spatial conv: zeros (the paper's), replicate or reflect")
    parser.add_argument("--spatial-kernel-size", type=int, help="odd kernel side of the spatial conv (default 7)")
    parser.add_argument("--gradcam-stage", type=int, choices=GRADCAM_STAGES,
                        help="stage Grad-CAM explains: 4 the last (the paper's, default) or 3 (a finer map)")
    parser.add_argument("--no-pretrained-backbone", dest="pretrained_backbone", action="store_false", default=None,
                        help="random backbone initialisation instead of ImageNet weights")
    parser.add_argument("--backbone-weights", help="local timm checkpoint with ImageNet weights (offline machines)")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="per process")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--lr-factor", type=float, help="ReduceLROnPlateau factor (default 0.5)")
    parser.add_argument("--lr-patience", type=int, help="ReduceLROnPlateau patience in epochs (default 5)")
    parser.add_argument("--early-stopping-patience", type=int,
                        help="epochs without a lower validation loss (default 10)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"])
    parser.add_argument("--gradient-accumulation-steps", type=int)
    parser.add_argument("--num-workers", type=int, help="DataLoader workers (default: 0 on CPU, up to 8 on GPU)")
    parser.add_argument("--report-to", choices=["tensorboard"], help="experiment tracking (logs under RUN/)")
    parser.add_argument("--resume", action="store_true", default=None, help="continue from RUN/state/")
    parser.add_argument("--checkpoint-every", type=int,
                        help="save RUN/state/ every N epochs and after the last one (default 1)")
    return vars(parser.parse_args(argv))


def main(argv=None) -> str:
    try:
        return train(parse_args(argv))
    except (ConfigError, BackboneWeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
