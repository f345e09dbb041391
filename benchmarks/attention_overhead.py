"""What the dual attention costs: our ResNet-50 + dual attention against a bare timm ResNet-50.

Both models have the same frozen stages (same `requires_grad` mask, frozen BatchNorms in eval mode)
and random weights. Measured in one run, interleaved so that load on a shared machine hits both
alike, after a warm-up:
- training step: forward, BCE loss, backward, Adam step (batch 8, 224 px by default);
- inference: batch-1 forward without gradients;
- the attention alone (forward, backward, Adam step on last-stage features), which gives the
  training-step overhead without the load noise of timing two whole steps.
Prints the medians and the ratios ours / bare, and bare again / bare for a second identical bare
model: the noise floor of the machine. Goal: <= 1.03 for the training step.

    python benchmarks/attention_overhead.py [--steps 6] [--batch-size 8] [--image-size 224] [--device cpu]
"""

import argparse
import statistics

import timm
import torch
from torch import nn

from modeling import DualAttentionResNetConfig, DualAttentionResNetForImageClassification
from timing import interleaved


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps per model")
    parser.add_argument("--inference-repeats", type=int, default=20, help="timed batch-1 forwards per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (and forwards) per model first")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    return parser.parse_args(argv)


def bare_timm_model(backbone: str, frozen_parameter_names: list) -> nn.Module:
    """`timm.create_model(backbone)` with one output and the given parameters frozen."""
    model = timm.create_model(backbone, pretrained=False, num_classes=1)
    frozen = set(frozen_parameter_names)
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
    return model


def freeze_batchnorm_statistics(model: nn.Module, frozen_parameter_names: list) -> None:
    """What our model's `train()` does for the bare one: BatchNorms of frozen stages back to eval mode."""
    owners = {name.rpartition(".")[0] for name in frozen_parameter_names}
    for name, module in model.named_modules():
        if name in owners and isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = DualAttentionResNetConfig(backbone=args.backbone, attention="dual")
    ours = DualAttentionResNetForImageClassification(config)
    frozen_names = ours.dual_attention_resnet.frozen_parameter_names
    # A second, identical bare model: the ratio between the two bare ones is the noise floor of this
    # machine (memory placement, other processes), against which the attention's ratio can be judged.
    models = {"ours": ours, "bare": bare_timm_model(args.backbone, frozen_names)}
    models["bare again"] = bare_timm_model(args.backbone, frozen_names)
    for name in ("bare", "bare again"):
        # same values as our backbone, so nothing value-dependent (e.g. denormals) differs
        models[name].load_state_dict(ours.dual_attention_resnet.backbone.state_dict(), strict=False)
    for model in models.values():
        model.to(device)

    generator = torch.Generator().manual_seed(args.seed)
    pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator).to(device)
    labels = torch.randint(0, 2, (args.batch_size,), generator=generator).float().to(device)
    logits_of = {**models, "ours": lambda x: ours(x).logits}
    optimizers = {
        name: torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-5)
        for name, model in models.items()
    }

    def train_step(name):
        optimizers[name].zero_grad(set_to_none=True)
        loss = nn.functional.binary_cross_entropy_with_logits(logits_of[name](pixels).view(-1), labels)
        loss.backward()
        optimizers[name].step()

    def forward(name):
        with torch.no_grad():
            logits_of[name](pixels[:1])

    for name, model in models.items():
        model.train()
        if name != "ours":
            freeze_batchnorm_statistics(model, frozen_names)
    train_seconds = interleaved(
        {name: (lambda name=name: train_step(name)) for name in models}, args.steps,
        warmup=args.warmup, device=device, desc="train steps",
    )
    for model in models.values():
        model.eval()
    infer_seconds = interleaved(
        {name: (lambda name=name: forward(name)) for name in models},
        args.inference_repeats, warmup=args.warmup, device=device, desc="batch-1 forwards",
    )

    # The added work alone, repeated many times because it is small: the attention's forward, backward
    # and Adam step on last-stage features of the benchmark's shape. Unlike the whole-step ratio it
    # hardly moves with machine load.
    attention = ours.dual_attention_resnet.attention
    with torch.no_grad():
        features = ours.dual_attention_resnet.forward_features(pixels).requires_grad_(True)
    attention_optimizer = torch.optim.Adam(attention.parameters(), lr=1e-4, weight_decay=1e-5)

    def attention_step():
        attention_optimizer.zero_grad(set_to_none=True)
        features.grad = None
        attention(features)[0].mean().backward()
        attention_optimizer.step()

    attention.train()
    attention_seconds = interleaved(
        {"attention": attention_step}, args.inference_repeats, warmup=args.warmup, device=device, desc="attention alone"
    )["attention"]

    trainable = {name: sum(p.numel() for p in m.parameters() if p.requires_grad) for name, m in models.items()}
    print(
        f"\n{args.backbone} on {device} ({torch.get_num_threads()} threads), batch {args.batch_size}, "
        f"{args.image_size} px; trainable parameters: ours {trainable['ours']:,}, bare {trainable['bare']:,}"
    )
    for title, seconds in (("training step", train_seconds), ("batch-1 forward", infer_seconds)):
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        print(
            f"{title} (n={len(seconds['ours'])}): median ours {medians['ours'] * 1e3:.1f} ms, "
            f"bare {medians['bare'] * 1e3:.1f} ms, bare again {medians['bare again'] * 1e3:.1f} ms"
        )
        for name in ("ours", "bare again"):
            paired = statistics.median(a / b for a, b in zip(seconds[name], seconds["bare"], strict=True))
            print(
                f"  ratio {name:10s} / bare: {medians[name] / medians['bare']:.3f} "
                f"(median of per-round ratios {paired:.3f})"
            )
    attention_median = statistics.median(attention_seconds)
    bare_step = statistics.median(train_seconds["bare"])
    print(
        f"attention alone (forward, backward, Adam; features {tuple(features.shape)}): {attention_median * 1e3:.1f} ms"
        f" = {attention_median / bare_step:.2%} of the bare training step; "
        f"training-step ratio from it: {(bare_step + attention_median) / bare_step:.3f}"
    )


if __name__ == "__main__":
    main()
