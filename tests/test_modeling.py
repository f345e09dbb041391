"""The model: shapes, the attention arithmetic, frozen stages, baselines, ImageNet initialisation, config."""

import json

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from conftest import TINY_BACKBONE, TINY_SIZE, tiny_model

from modeling import (
    ATTENTION_MODES,
    DualAttentionResNetConfig,
    DualAttentionResNetForImageClassification,
    DualAttentionResNetModel,
)
from modeling.attention import DualAttention

# resnet10t: 512 channels on a 2 x 2 map at 64 px (reduction 32).
TINY_CHANNELS, TINY_MAP = 512, TINY_SIZE // 32
# resnet10t's stem is the Sequential `conv1` plus `bn1`; stages 1 and 2 are `layer1`, `layer2`.
TINY_FROZEN_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.")


def _pixels(batch=2, size=TINY_SIZE, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attention", ATTENTION_MODES)
def test_forward_shapes_maps_and_loss_for_every_attention_mode(attention):
    model = tiny_model(attention=attention)
    labels = torch.tensor([1, 0])
    with torch.no_grad():
        output = model(_pixels(), labels=labels)

    assert output.logits.shape == (2, 1)
    assert torch.isfinite(output.logits).all()
    expected_loss = -(torch.log(torch.sigmoid(output.logits[0, 0])) + torch.log(1 - torch.sigmoid(output.logits[1, 0]))) / 2
    torch.testing.assert_close(output.loss, expected_loss)
    if attention in ("dual", "channel"):
        assert output.channel_attention.shape == (2, TINY_CHANNELS)
        assert ((output.channel_attention > 0) & (output.channel_attention < 1)).all()
    else:
        assert output.channel_attention is None
    if attention in ("dual", "spatial"):
        assert output.spatial_attention.shape == (2, 1, TINY_MAP, TINY_MAP)
        assert ((output.spatial_attention > 0) & (output.spatial_attention < 1)).all()
    else:
        assert output.spatial_attention is None


def test_base_model_returns_attended_features_and_pooled_vector():
    model = tiny_model()
    with torch.no_grad():
        features = model.dual_attention_resnet.forward_features(_pixels())
        output = model.dual_attention_resnet(_pixels())
    assert features.shape == (2, TINY_CHANNELS, TINY_MAP, TINY_MAP)
    assert output.last_hidden_state.shape == features.shape
    torch.testing.assert_close(output.pooler_output, output.last_hidden_state.mean((2, 3)))


def test_num_channels_sets_the_backbone_input_channels():
    model = tiny_model(num_channels=1)
    assert model.dual_attention_resnet.backbone.conv1[0].in_channels == 1
    with torch.no_grad():
        assert model(_pixels()[:, :1]).logits.shape == (2, 1)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_dual_attention_is_channel_product_plus_spatial_product_by_hand():
    """SE (reduction 2) and a 3x3 spatial conv on a (1, 4, 3, 3) map, recomputed with numpy loops."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 3)).astype(np.float32)
    w1, b1 = rng.normal(size=(2, 4)).astype(np.float32), rng.normal(size=2).astype(np.float32)
    w2, b2 = rng.normal(size=(4, 2)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    kernel = rng.normal(size=(2, 3, 3)).astype(np.float32)
    module = DualAttention(4, "dual", reduction=2, kernel_size=3)
    with torch.no_grad():
        module.channel.fc1.weight.copy_(torch.from_numpy(w1)[:, :, None, None])
        module.channel.fc1.bias.copy_(torch.from_numpy(b1))
        module.channel.fc2.weight.copy_(torch.from_numpy(w2)[:, :, None, None])
        module.channel.fc2.bias.copy_(torch.from_numpy(b2))
        module.spatial.conv.weight.copy_(torch.from_numpy(kernel)[None])
        attended, channel, spatial = module(torch.from_numpy(x)[None])

    squeeze = x.mean(axis=(1, 2))
    expected_channel = _sigmoid(w2 @ np.maximum(w1 @ squeeze + b1, 0) + b2)
    pooled = np.pad(np.stack([x.mean(axis=0), x.max(axis=0)]), ((0, 0), (1, 1), (1, 1)))
    expected_spatial = np.empty((3, 3), dtype=np.float32)
    for i in range(3):
        for j in range(3):
            expected_spatial[i, j] = _sigmoid((pooled[:, i : i + 3, j : j + 3] * kernel).sum())
    expected = x * expected_channel[:, None, None] + x * expected_spatial[None]

    np.testing.assert_allclose(channel[0].numpy(), expected_channel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(spatial[0, 0].numpy(), expected_spatial, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(attended[0].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_trainable_parameters_get_gradients_and_frozen_stages_do_not():
    model = tiny_model().train()
    backbone = model.dual_attention_resnet.backbone
    frozen = set(model.dual_attention_resnet.frozen_parameter_names)
    assert frozen == {n for n, _ in backbone.named_parameters() if n.startswith(TINY_FROZEN_PREFIXES)}
    frozen_bn = backbone.layer2[0].bn1
    trained_bn = backbone.layer3[0].bn1
    frozen_stats = (frozen_bn.running_mean.clone(), frozen_bn.running_var.clone())
    trained_mean = trained_bn.running_mean.clone()

    output = model(_pixels(batch=4), labels=torch.tensor([1, 0, 1, 0]))
    output.loss.backward()

    assert not frozen_bn.training and trained_bn.training
    torch.testing.assert_close((frozen_bn.running_mean, frozen_bn.running_var), frozen_stats, rtol=0, atol=0)
    assert not torch.equal(trained_bn.running_mean, trained_mean)
    for name, param in model.named_parameters():
        if name.removeprefix("dual_attention_resnet.backbone.") in frozen:
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.requires_grad and param.grad is not None and torch.isfinite(param.grad).all(), name
    assert model.classifier.weight.grad.abs().sum() > 0
    assert model.dual_attention_resnet.attention.spatial.conv.weight.grad.abs().sum() > 0
    assert model.dual_attention_resnet.attention.channel.fc1.weight.grad.abs().sum() > 0


def test_frozen_stages_zero_trains_everything():
    model = tiny_model(frozen_stages=0).train()
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())


def test_frozen_stages_beyond_the_backbone_names_the_stages():
    with pytest.raises(ValueError, match=r"`frozen_stages` must be below 5 .* got 5"):
        tiny_model(frozen_stages=5)


def test_from_pretrained_gives_same_logits_and_keeps_stages_frozen(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = DualAttentionResNetForImageClassification.from_pretrained(tmp_path)

    assert not loaded.training
    for (name, param), (loaded_name, loaded_param) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == loaded_name and torch.equal(param, loaded_param), name
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in model.parameters()]
    assert sum(not p.requires_grad for p in loaded.parameters()) > 0
    with torch.no_grad():
        torch.testing.assert_close(loaded(_pixels()).logits, model(_pixels()).logits)
    loaded.train()
    assert not loaded.dual_attention_resnet.backbone.layer2[0].bn1.training


@pytest.mark.parametrize(
    ("backbone", "size", "frozen_prefixes"),
    [
        ("resnet50", 64, ("conv1.", "bn1.", "layer1.", "layer2.")),
        # VGG's stage modules are ReLUs (no parameters); stem + 2 stages = the first three blocks, 7 convs.
        ("vgg16", 64, tuple(f"features.{i}." for i in (0, 2, 5, 7, 10, 12, 14))),
        # ViT's stages are its blocks: embeddings + blocks 0-2.
        ("vit_base_patch16_224", 224, ("cls_token", "pos_embed", "patch_embed.", "blocks.0.", "blocks.1.", "blocks.2.")),
    ],
)
def test_paper_baselines_construct_and_forward_through_the_same_head(backbone, size, frozen_prefixes):
    torch.manual_seed(0)
    model = DualAttentionResNetForImageClassification(
        DualAttentionResNetConfig(backbone=backbone, attention="none")
    ).eval()
    names = [n for n, _ in model.dual_attention_resnet.backbone.named_parameters()]
    assert model.dual_attention_resnet.frozen_parameter_names == [n for n in names if n.startswith(frozen_prefixes)]
    with torch.no_grad():
        output = model(_pixels(batch=1, size=size))
    assert output.logits.shape == (1, 1) and torch.isfinite(output.logits).all()
    assert output.channel_attention is None and output.spatial_attention is None


def test_attention_on_a_token_backbone_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"attention='dual'.*attention='none' with 'vit_small_patch16_224'"):
        DualAttentionResNetModel(DualAttentionResNetConfig(backbone="vit_small_patch16_224"))


def test_imagenet_initialisation_from_a_local_timm_checkpoint(tmp_path):
    torch.manual_seed(1)
    reference = timm.create_model(TINY_BACKBONE).state_dict()  # with its 1000-class fc, as timm ships it
    path = tmp_path / "resnet10t.safetensors"
    safetensors.torch.save_file(reference, path)
    model = tiny_model()
    frozen_mask = [p.requires_grad for p in model.parameters()]

    model.dual_attention_resnet.load_backbone_weights(path)

    loaded = model.dual_attention_resnet.backbone.state_dict()
    assert set(reference) - set(loaded) == {"fc.weight", "fc.bias"}
    for name, tensor in loaded.items():
        assert torch.equal(tensor, reference[name]), name
    assert [p.requires_grad for p in model.parameters()] == frozen_mask


def test_imagenet_initialisation_errors_are_one_clear_line(tmp_path):
    model = tiny_model().dual_attention_resnet
    with pytest.raises(FileNotFoundError, match="Backbone weights file not found: .*missing.safetensors"):
        model.load_backbone_weights(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"Could not load backbone weights from .*junk.safetensors: ") as info:
        model.load_backbone_weights(junk)
    assert "\n" not in str(info.value)
    # conftest sets HF_HUB_OFFLINE=1, so the timm download cannot happen.
    with pytest.raises(RuntimeError, match=r"offline\?.*--no-pretrained-backbone.*--backbone-weights PATH"):
        model.load_backbone_weights()


def test_config_json_round_trip(tmp_path):
    config = DualAttentionResNetConfig(
        backbone="resnet18", attention="spatial", se_reduction=8, spatial_kernel_size=3, dropout=0.25,
        frozen_stages=1, decision_threshold=0.37, image_size=128,
    )
    config.save_pretrained(tmp_path)
    on_disk = json.loads((tmp_path / "config.json").read_text())
    loaded = DualAttentionResNetConfig.from_pretrained(tmp_path)

    assert loaded.to_dict() == config.to_dict()
    assert DualAttentionResNetConfig.from_dict(json.loads(config.to_json_string())).to_dict() == config.to_dict()
    assert on_disk["model_type"] == "dual_attention_resnet"
    assert on_disk["id2label"] == {"0": "metastatic"}
    assert on_disk["auto_map"]["AutoModelForImageClassification"] == (
        "modeling_dual_attention_resnet.DualAttentionResNetForImageClassification"
    )
    assert (loaded.backbone, loaded.attention, loaded.decision_threshold) == ("resnet18", "spatial", 0.37)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("backbone", "resnet5"),
        ("backbone", ""),
        ("attention", "cbam"),
        ("se_reduction", 0),
        ("spatial_kernel_size", 4),
        ("dropout", 1.0),
        ("dropout", "0.5"),
        ("frozen_stages", -1),
        ("decision_threshold", 1.5),
        ("image_size", 0),
        ("num_channels", 3.0),
    ],
)
def test_config_rejects_invalid_values_naming_field_and_value(field, value):
    with pytest.raises(ValueError) as info:
        DualAttentionResNetConfig(**{field: value})
    message = str(info.value)
    assert f"`{field}`" in message and repr(value) in message and "\n" not in message
