"""Shared fixtures. Nothing here touches the network: tiny random models, synthetic DICOMs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from modeling import CTImageProcessor, DualAttentionResNetConfig, DualAttentionResNetForImageClassification  # noqa: E402

TINY_BACKBONE = "resnet10t"
TINY_SIZE = 64


def tiny_model(**config_overrides) -> DualAttentionResNetForImageClassification:
    """A random resnet10t dual-attention model, seeded, in eval mode."""
    torch.manual_seed(0)
    config = DualAttentionResNetConfig(backbone=TINY_BACKBONE, image_size=TINY_SIZE, **config_overrides)
    return DualAttentionResNetForImageClassification(config).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny model + processor (64 px), as training writes RUN/best/."""
    path = tmp_path_factory.mktemp("tiny_model")
    tiny_model().save_pretrained(path)
    CTImageProcessor(size=TINY_SIZE, image_mean=[0.3] * 3, image_std=[0.25] * 3).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """A small CT phantom: 12 slices per class, 2 per patient (12 patients), 96 px native."""
    from training.phantom import generate_phantom

    path = tmp_path_factory.mktemp("phantom")
    generate_phantom(path, n_per_class=12, seed=0, image_size=96, slices_per_patient=2, progress=False)
    return path


@pytest.fixture(scope="session")
def prepared_dataset(phantom_dir, tmp_path_factory):
    """`phantom_dir` prepared at 64 px from its manifest (masks included); returns the DS path."""
    from training.prepare import prepare_dataset

    path = tmp_path_factory.mktemp("prepared") / "ds"
    prepare_dataset(phantom_dir / "manifest.csv", path, size=TINY_SIZE, seed=0, num_workers=1)
    return path
