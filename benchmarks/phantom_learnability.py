"""Is the phantom learnable on a CPU, and not by a trivial rule? Prints, for a prepared phantom:

- the AUC of trivial rules (mean slice intensity, mean intensity inside the body, body area): near 0.5;
- per epoch of a short from-scratch training run: loss, validation and test AUC, wall and CPU seconds.

    python -m training.phantom PH --n-per-class 150 --seed 0
    python -m training.prepare PH/manifest.csv --output DS --size 128 --pixel-spacing-mm 2.5  # as the quickstart
    python benchmarks/phantom_learnability.py DS [--backbone resnet10t] [--epochs 20] [--batch-size 16] [--lr 1e-3]
"""

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from modeling import DualAttentionResNetConfig, DualAttentionResNetForImageClassification
from training.data import load_prepared, torch_splits

BODY_THRESHOLD = 0.02  # windowed value above air: inside the body outline


def trivial_rule_aucs(split) -> dict:
    images = np.asarray(split.with_format("numpy")["image"])
    labels = np.asarray(split["label"])
    body = images > BODY_THRESHOLD
    return {
        "mean intensity": roc_auc_score(labels, images.mean((1, 2))),
        "mean in body": roc_auc_score(labels, (images * body).sum((1, 2)) / body.sum((1, 2))),
        "body area": roc_auc_score(labels, body.sum((1, 2))),
    }


@torch.no_grad()
def auc(model, split) -> float:
    model.eval()
    probabilities, labels = [], []
    for batch in torch.utils.data.DataLoader(split, batch_size=64):
        probabilities.append(torch.sigmoid(model(batch["pixel_values"]).logits[:, 0]))
        labels.append(batch["labels"])
    return roc_auc_score(torch.cat(labels), torch.cat(probabilities))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data")
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--image-size", type=int, default=None, help="default: the prepared size")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    dataset_dict, info = load_prepared(args.data)
    for name, split in dataset_dict.items():
        print(f"{name}: trivial-rule AUC " + ", ".join(f"{k} {v:.3f}" for k, v in trivial_rule_aucs(split).items()))
    splits = torch_splits(dataset_dict, info, augment=True, image_size=args.image_size)
    config = DualAttentionResNetConfig(backbone=args.backbone, attention="dual", frozen_stages=0,
                                       image_size=args.image_size or info["size"])
    model = DualAttentionResNetForImageClassification(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-5)
    loader = torch.utils.data.DataLoader(splits["train"], batch_size=args.batch_size, shuffle=True)
    wall, cpu = time.perf_counter(), time.process_time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        losses = []
        for batch in loader:
            loss = model(batch["pixel_values"], labels=batch["labels"]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        print(f"epoch {epoch}: loss {np.mean(losses):.3f}, validation AUC {auc(model, splits['validation']):.3f}, "
              f"test AUC {auc(model, splits['test']):.3f}, wall {time.perf_counter() - wall:.0f} s, "
              f"CPU {time.process_time() - cpu:.0f} s", flush=True)


if __name__ == "__main__":
    main()
