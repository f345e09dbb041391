"""What an explanation costs: `modeling.explain.explain` against a bare forward, in one run.

    python benchmarks/explain_cost.py [--repeats 30] [--size 224] [--batch-size 1] [--threads N] [--device cpu]

Times, for the dual-attention ResNet-50 (random weights: the cost does not depend on them):
  bare      a no-grad forward (the probability alone);
  explain   `explain(model, x)`: probability + attention map + Grad-CAM from one forward and a
            backward that stops at the stage-4 activations;
  usual     pytorch-grad-cam's usual `GradCAM(...)(x)` (full backward, parameter gradients) plus a
            separate no-grad forward for the probability and the attention map.
The three run interleaved, round after round, so drift in machine load hits them alike;
medians and minima and their ratios to `bare` are printed. Goal: explain <= 1.2 x bare.
"""

import argparse
import statistics

import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from modeling import DualAttentionResNetConfig, DualAttentionResNetForImageClassification
from modeling.explain import LogitsOnly, explain, target_layer
from timing import interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = DualAttentionResNetForImageClassification(DualAttentionResNetConfig(backbone=args.backbone))
    model.to(args.device).eval()
    pixel_values = torch.randn(args.batch_size, 3, args.size, args.size, device=args.device)
    targets = [ClassifierOutputTarget(0)] * args.batch_size

    def bare():
        with torch.no_grad():
            torch.sigmoid(model(pixel_values).logits)

    def one_pass():
        explain(model, pixel_values)

    def usual():
        with GradCAM(model=LogitsOnly(model), target_layers=[target_layer(model)]) as cam:
            cam(input_tensor=pixel_values, targets=targets)
        with torch.no_grad():
            torch.sigmoid(model(pixel_values).logits)

    cases = {"bare": bare, "explain": one_pass, "usual": usual}
    seconds = interleaved(cases, args.repeats, warmup=args.warmup, device=pixel_values.device)

    medians = {name: statistics.median(times) for name, times in seconds.items()}
    fastest = {name: min(times) for name, times in seconds.items()}
    print(
        f"{args.backbone} dual attention, batch {args.batch_size}, {args.size} px, {args.device}, "
        f"{torch.get_num_threads()} threads, {args.repeats} interleaved rounds"
    )
    print(f"{'case':<8} {'median ms':>10} {'x bare':>7} {'min ms':>8} {'x bare':>7}")
    for name in cases:
        print(
            f"{name:<8} {medians[name] * 1e3:>10.1f} {medians[name] / medians['bare']:>7.2f} "
            f"{fastest[name] * 1e3:>8.1f} {fastest[name] / fastest['bare']:>7.2f}"
        )
    # On a shared machine the minimum is the least disturbed run; on a quiet one the two agree.
    for label, times in (("median", medians), ("min", fastest)):
        print(
            f"{label:>6}: explain / bare = {times['explain'] / times['bare']:.2f} (goal <= 1.2), "
            f"usual / bare = {times['usual'] / times['bare']:.2f}, "
            f"usual / explain = {times['usual'] / times['explain']:.2f}"
        )

if __name__ == "__main__":
    main()
