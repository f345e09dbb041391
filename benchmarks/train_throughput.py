"""Training throughput: a steady epoch of our training loop (augmented data loading and validation
included) against a bare timm ResNet-50 loop doing the same training steps and validation forwards on
random in-memory tensors, same device, batch, size and frozen stages; prints the ratio.

    python benchmarks/train_throughput.py                      # CPU: small phantom, 128 px, ratio
    python benchmarks/train_throughput.py --device cuda --json out.json
        # GPU, one command (< 5 min on an H100): bf16 autocast + channels_last ResNet-50 at 224 with the
        # paper's frozen stages, images/s at batch 32..256 (bare timm vs our model), then the paper
        # protocol's wall time: phantom (600 train + 150 validation slices) -> prepare -> 30 epochs.

Every number comes from this run; the ratio compares two loops measured on the same machine now.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import timm

from training.train import CONFIG_DIR, build_model, train

FROZEN_STAGES = 2  # the paper's: stem + stages 1 and 2


def bare_resnet50(device: torch.device, channels_last: bool) -> torch.nn.Module:
    """timm ResNet-50 with one output and the same frozen stem + stages 1-2 (BatchNorm there in eval mode)."""
    model = timm.create_model("resnet50", pretrained=False, num_classes=1).to(device)
    frozen = [model.conv1, model.bn1, model.layer1, model.layer2]
    for module in frozen:
        module.requires_grad_(False)
    model.train()
    for module in frozen:
        module.eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def our_model(device: torch.device, channels_last: bool, image_size: int) -> torch.nn.Module:
    model = build_model({"backbone": "resnet50", "attention": "dual", "dropout": 0.5, "frozen_stages": FROZEN_STAGES,
                         "image_size": image_size, "pretrained_backbone": False}).to(device).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def step_throughput(model, device, batch: int, size: int, steps: int, warmup: int, bf16: bool, ours: bool) -> float:
    """Images/s of forward + BCE + backward + Adam step on a fixed random batch (no data loading)."""
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 2, (batch,), device=device)
    # the same Adam as training.train's (fused where torch has it), so the ratio measures the loop around the step
    optimizer = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=device.type in ("cpu", "cuda")
    )

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if ours:
                loss = model(pixel_values=images, labels=labels).loss
            else:
                logits = model(images)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float().view(-1), labels.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - started)


def forward_throughput(model, device, batch: int, size: int, steps: int) -> float:
    """Images/s of validation forwards (inference mode) on a fixed random batch."""
    images = torch.randn(batch, 3, size, size, device=device)
    model.eval()
    with torch.inference_mode():
        model(images)  # warm-up
        started = time.perf_counter()
        for _ in range(steps):
            model(images)
    model.train()
    return batch * steps / (time.perf_counter() - started)


def prepare_phantom(workdir: str, n_per_class: int, size: int) -> dict:
    """Phantom -> prepared dataset; returns the dataset path and the seconds of each phase."""
    from training.phantom import generate_phantom
    from training.prepare import prepare_dataset

    started = time.perf_counter()
    manifest = generate_phantom(os.path.join(workdir, "phantom"), n_per_class=n_per_class, seed=0, progress=False)
    phantom_s = time.perf_counter() - started
    started = time.perf_counter()
    prepare_dataset(manifest, os.path.join(workdir, "ds"), size=size, seed=0)
    return {"data": os.path.join(workdir, "ds"), "phantom_s": phantom_s, "prepare_s": time.perf_counter() - started}


def loop_throughput(data: str, run_dir: str, settings: dict) -> dict:
    """Runs train() and returns its wall time and images/s over the epochs after the first (warm-up)."""
    started = time.perf_counter()
    train({"data": data, "output_dir": run_dir, **settings})
    wall_s = time.perf_counter() - started
    with open(os.path.join(run_dir, "history.json")) as handle:
        epochs = json.load(handle)["epochs"]
    from training.data import load_prepared

    dataset_dict = load_prepared(data)[0]
    n_train, n_validation = len(dataset_dict["train"]), len(dataset_dict["validation"])
    steady = [e["time_s"] for e in epochs[1:]] or [epochs[0]["time_s"]]
    return {"train_wall_s": wall_s, "epochs": len(epochs), "n_train": n_train, "n_validation": n_validation,
            "images_per_s": n_train / (sum(steady) / len(steady)), "first_epoch_s": epochs[0]["time_s"]}


def bare_epoch_throughput(model, device, batch: int, size: int, n_train: int, n_validation: int) -> float:
    """Training images/s of a bare epoch: the training steps and validation forwards our loop does for
    `n_train` + `n_validation` slices, on in-memory tensors."""
    train_rate = step_throughput(model, device, batch, size, max(1, n_train // batch), 1, False, False)
    validation_rate = forward_throughput(model, device, batch, size, max(1, n_validation // batch))
    return n_train / (n_train / train_rate + n_validation / validation_rate)


def run_cpu(args) -> dict:
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as workdir:
        data = prepare_phantom(workdir, args.n_per_class, args.image_size)
        from training.data import load_prepared

        dataset_dict = load_prepared(data["data"])[0]
        sizes = (args.batch_size, args.image_size, len(dataset_dict["train"]), len(dataset_dict["validation"]))
        bare_model = bare_resnet50(device, False)
        bare_epoch_throughput(bare_model, device, *sizes)  # warm-up, as our loop's first epoch is not counted
        # Bare before and after ours: on a shared machine the load drifts, and the two show by how much.
        bare_before = bare_epoch_throughput(bare_model, device, *sizes)
        ours = loop_throughput(data["data"], os.path.join(workdir, "run"), {
            "backbone": "resnet50", "attention": "dual", "frozen_stages": FROZEN_STAGES, "pretrained_backbone": False,
            "image_size": args.image_size, "batch_size": args.batch_size, "epochs": args.epochs, "num_workers": 0,
        })
        bare_after = bare_epoch_throughput(bare_model, device, *sizes)
    bare = (bare_before + bare_after) / 2
    return {"device": "cpu", "threads": torch.get_num_threads(), "image_size": args.image_size,
            "batch_size": args.batch_size, "ours_loop": ours, "bare_timm_images_per_s": bare,
            "bare_timm_before_after": [bare_before, bare_after], "ratio_ours_over_bare": ours["images_per_s"] / bare,
            "phantom_s": data["phantom_s"], "prepare_s": data["prepare_s"]}


def run_cuda(args) -> dict:
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    result = {"device": torch.cuda.get_device_name(0), "image_size": 224, "bf16": True, "channels_last": True,
              "frozen_stages": FROZEN_STAGES, "batches": {}}
    for batch in args.batches:
        row = {}
        for name, build, ours in (("bare_timm", lambda: bare_resnet50(device, True), False),
                                  ("ours_model", lambda: our_model(device, True, 224), True)):
            model = build()
            row[name] = step_throughput(model, device, batch, 224, args.steps, args.warmup, True, ours)
            del model
            torch.cuda.empty_cache()
        result["batches"][batch] = row
        print(f"batch {batch}: bare timm {row['bare_timm']:.0f} img/s, our model {row['ours_model']:.0f} img/s",
              flush=True)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        # 450 per class -> 600 train / 150 validation / 150 test after the 66.7/16.7/16.7 split
        data = prepare_phantom(workdir, 450, 224)
        print(f"phantom {data['phantom_s']:.1f} s, prepare {data['prepare_s']:.1f} s", flush=True)
        ours = loop_throughput(data["data"], os.path.join(workdir, "run"), {
            "config": os.path.join(CONFIG_DIR, "paper.yaml"),
            "pretrained_backbone": False,  # the benchmark machine is offline; weights do not change the speed
            "mixed_precision": "bf16", "early_stopping_patience": 1000,  # all 30 epochs, for a fixed amount of work
        })
    result["paper_protocol"] = {**{k: v for k, v in data.items() if k != "data"}, **ours,
                                "total_wall_s": time.perf_counter() - started}
    bare_32 = result["batches"].get(32, {}).get("bare_timm")
    if bare_32:
        result["ratio_ours_loop_over_bare_at_32"] = ours["images_per_s"] / bare_32
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--image-size", type=int, default=128, help="CPU mode (GPU mode uses 224)")
    parser.add_argument("--batch-size", type=int, default=8, help="CPU mode")
    parser.add_argument("--n-per-class", type=int, default=24, help="CPU mode phantom size")
    parser.add_argument("--epochs", type=int, default=3, help="CPU mode; the first is warm-up")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256], help="GPU mode")
    parser.add_argument("--steps", type=int, default=30, help="GPU mode timed steps per batch size")
    parser.add_argument("--warmup", type=int, default=10, help="GPU mode")
    args = parser.parse_args(argv)
    result = run_cuda(args) if args.device == "cuda" else run_cpu(args)

    print("\n== train throughput ==")
    if args.device == "cpu":
        ours = result["ours_loop"]
        print(f"cpu ({result['threads']} threads), resnet50 frozen {FROZEN_STAGES}, {args.image_size} px, "
              f"batch {args.batch_size}")
        print(f"our loop (augmented data + validation):   {ours['images_per_s']:.2f} train img/s over "
              f"{ours['n_train']} "
              f"train + {ours['n_validation']} validation slices per epoch")
        before, after = result["bare_timm_before_after"]
        print(f"bare timm loop (same steps, random tensors): {result['bare_timm_images_per_s']:.2f} train img/s "
              f"(before ours {before:.2f}, after {after:.2f})")
        print(f"ratio ours / bare: {result['ratio_ours_over_bare']:.2f}")
    else:
        print(f"{result['device']}, bf16 + channels_last, resnet50 frozen {FROZEN_STAGES}, 224 px")
        for batch, row in result["batches"].items():
            print(f"  batch {batch:>3}: bare timm {row['bare_timm']:7.0f} img/s | "
                  f"our model {row['ours_model']:7.0f} img/s "
                  f"| ratio {row['ours_model'] / row['bare_timm']:.2f}")
        p = result["paper_protocol"]
        print(f"paper protocol ({p['epochs']} epochs, {p['n_train']} train slices): phantom {p['phantom_s']:.1f} s + "
              f"prepare {p['prepare_s']:.1f} s + train {p['train_wall_s']:.1f} s = {p['total_wall_s']:.1f} s; "
              f"loop {p['images_per_s']:.0f} img/s (first epoch {p['first_epoch_s']:.1f} s)")
        if "ratio_ours_loop_over_bare_at_32" in result:
            print(f"ratio our loop / bare timm at batch 32: {result['ratio_ours_loop_over_bare_at_32']:.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
