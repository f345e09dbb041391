"""The model: shapes, the attention arithmetic, frozen stages, baselines, ImageNet initialisation, config."""

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from conftest import TINY_BACKBONE, TINY_SIZE, tiny_model
from torch import nn

from modeling import (
    ATTENTION_MODES,
    DualAttentionResNetConfig,
    DualAttentionResNetForImageClassification,
    DualAttentionResNetModel,
)
from modeling.attention import DualAttention, attention_supervision_loss
from modeling.backbone_stages import backbone_stage, check_runs_stage_by_stage
from modeling.explain import explain

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
    probabilities = torch.sigmoid(output.logits[:, 0])
    expected_loss = -(torch.log(probabilities[0]) + torch.log(1 - probabilities[1])) / 2
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
    pairs = zip(model.state_dict().items(), loaded.state_dict().items(), strict=True)
    for (name, param), (loaded_name, loaded_param) in pairs:
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
        ("vit_base_patch16_224", 224,
         ("cls_token", "pos_embed", "patch_embed.", "blocks.0.", "blocks.1.", "blocks.2.")),
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
    localisation = {
        "attention": {"pointing_game": 0.93, "pointing_game_ci": [0.85, 0.98], "energy_in_mask": 0.41,
                      "n_slices": 51, "chance": 0.018, "split": "test"},
    }
    config = DualAttentionResNetConfig(
        backbone="resnet18", attention="spatial", se_reduction=8, spatial_kernel_size=3, dropout=0.25,
        frozen_stages=1, decision_threshold=0.37, image_size=128, spatial_attention_stages=(4, 3),
        spatial_gate="conv_bn", spatial_padding="replicate", attention_loss_weight=0.5,
        localisation=localisation, threshold_note="validation separates perfectly; threshold 0.9963",
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
    assert on_disk["spatial_attention_stages"] == [3, 4]
    assert (on_disk["spatial_gate"], on_disk["spatial_padding"], on_disk["attention_loss_weight"]) == (
        "conv_bn", "replicate", 0.5
    )
    assert on_disk["localisation"] == localisation and loaded.localisation == localisation
    assert loaded.threshold_note == "validation separates perfectly; threshold 0.9963"
    defaults = DualAttentionResNetConfig()
    assert (defaults.localisation, defaults.threshold_note, defaults.spatial_attention_stages) == (None, None, [4])


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
        ("spatial_attention_stages", "5"),
        ("spatial_attention_stages", [2, 3]),
        # strings are the command line's, parsed by training (training.train.parse_stages)
        ("spatial_attention_stages", "3"),
        ("spatial_attention_stages", "3+4"),
        ("spatial_attention_stages", [3, 3]),
        ("spatial_attention_stages", [3.0]),
        ("spatial_attention_stages", True),
        ("spatial_gate", "bn"),
        ("spatial_padding", "circular"),
        ("attention_loss_weight", -0.5),
        ("localisation", {"saliency": {}}),
        ("localisation", {"attention": 0.9}),
        ("threshold_note", 0.99),
    ],
)
def test_config_rejects_invalid_values_naming_field_and_value(field, value):
    with pytest.raises(ValueError) as info:
        DualAttentionResNetConfig(**{field: value})
    message = str(info.value)
    assert f"`{field}`" in message and repr(value) in message and "\n" not in message


def test_spatial_settings_without_a_spatial_branch_are_refused():
    with pytest.raises(ValueError, match=r"need a spatial branch .* got attention='channel'"):
        DualAttentionResNetConfig(attention="channel", spatial_attention_stages=3)
    with pytest.raises(ValueError, match=r"need a spatial branch .* got attention='none'"):
        DualAttentionResNetConfig(attention="none", attention_loss_weight=1.0)


# ---- Weights missing from a checkpoint (transformers skips torch's and timm's initialisation on load)


def test_a_new_model_keeps_timm_initialisation():
    torch.manual_seed(0)
    reference = timm.create_model(TINY_BACKBONE, num_classes=0).state_dict()
    backbone = tiny_model().dual_attention_resnet.backbone.state_dict()
    for name, tensor in reference.items():
        assert torch.equal(backbone[name], tensor), name


def _assert_torch_linear_init(linear):
    bound = 1.0 / math.sqrt(linear.in_features)
    assert torch.isfinite(linear.weight).all() and linear.weight.abs().max() <= bound
    assert 0.3 * bound < linear.weight.std() < bound  # uniform(-b, b): std b / sqrt(3)
    assert linear.bias.abs().max() <= bound


def test_head_missing_from_a_base_model_checkpoint_gets_torch_initialisation(tmp_path):
    torch.manual_seed(0)
    base = DualAttentionResNetModel(DualAttentionResNetConfig(backbone=TINY_BACKBONE, image_size=TINY_SIZE))
    base.save_pretrained(tmp_path)

    loaded = DualAttentionResNetForImageClassification.from_pretrained(tmp_path)

    _assert_torch_linear_init(loaded.classifier)
    for name, tensor in base.state_dict().items():
        assert torch.equal(loaded.dual_attention_resnet.state_dict()[name], tensor), name
    with torch.no_grad():
        assert torch.isfinite(loaded(_pixels()).logits).all()


def test_layers_missing_from_a_backbone_only_checkpoint_get_timm_initialisation(tmp_path):
    """The checkpoint holds backbone stages 0-3 only: layer4, the attention and the head are new."""
    model = tiny_model()
    model.save_pretrained(tmp_path)
    saved = safetensors.torch.load_file(tmp_path / "model.safetensors")
    kept = {
        name: tensor for name, tensor in saved.items()
        if name.startswith("dual_attention_resnet.backbone.") and ".layer4." not in name
    }
    safetensors.torch.save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})

    loaded = DualAttentionResNetForImageClassification.from_pretrained(tmp_path)

    state = loaded.state_dict()
    for name, tensor in kept.items():
        assert torch.equal(state[name], tensor), name
    block = loaded.dual_attention_resnet.backbone.layer4[0]
    for conv in (block.conv1, block.conv2, loaded.dual_attention_resnet.attention.spatial.conv):
        # Kaiming normal, fan-out: std sqrt(2 / (out_channels * k * k)).
        expected_std = math.sqrt(2.0 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]))
        assert torch.isfinite(conv.weight).all()
        assert 0.5 * expected_std < conv.weight.std() < 1.5 * expected_std, conv
    assert torch.equal(block.bn2.weight, torch.ones_like(block.bn2.weight))
    assert torch.equal(block.bn1.running_var, torch.ones_like(block.bn1.running_var))
    assert torch.equal(block.bn1.running_mean, torch.zeros_like(block.bn1.running_mean))
    fc1 = loaded.dual_attention_resnet.attention.channel.fc1
    assert fc1.bias.abs().max() <= 1.0 / math.sqrt(fc1.in_channels)
    _assert_torch_linear_init(loaded.classifier)
    with torch.no_grad():
        assert torch.isfinite(loaded(_pixels()).logits).all()


# ---- transformers' output conventions


def test_return_dict_false_gives_a_tuple_logits_first_or_loss_first():
    model = tiny_model()
    pixels, labels = _pixels(), torch.tensor([1, 0])
    with torch.no_grad():
        output = model(pixels, labels=labels)
        plain = model(pixels, return_dict=False)
        with_loss = model(pixels, labels=labels, return_dict=False)
        base = model.dual_attention_resnet(pixels, return_dict=False)

    assert isinstance(plain, tuple) and len(plain) == 3
    for got, expected in zip(plain, (output.logits, output.channel_attention, output.spatial_attention), strict=True):
        torch.testing.assert_close(got, expected)
    assert len(with_loss) == 4
    torch.testing.assert_close(with_loss[0], output.loss)
    torch.testing.assert_close(with_loss[1], output.logits)
    assert base[1].shape == (2, TINY_CHANNELS)  # last_hidden_state, pooler_output, maps


def test_output_hidden_states_gives_every_stage_and_the_same_logits():
    model = tiny_model()
    with torch.no_grad():
        plain = model(_pixels())
        output = model(_pixels(), output_hidden_states=True)

    shapes = [tuple(h.shape) for h in output.hidden_states]
    assert shapes == [(2, 64, 32, 32), (2, 64, 16, 16), (2, 128, 8, 8), (2, 256, 4, 4), (2, TINY_CHANNELS, 2, 2)]
    assert plain.hidden_states is None
    torch.testing.assert_close(output.logits, plain.logits)
    torch.testing.assert_close(output.spatial_attention, plain.spatial_attention)


@pytest.mark.parametrize("stages", [[4], [3, 4]])
def test_gradient_checkpointing_goes_through_timm_and_gives_the_same_gradients(stages):
    def gradients(checkpointing):
        model = tiny_model(dropout=0.0, spatial_attention_stages=stages).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        model(_pixels(batch=4), labels=torch.tensor([1, 0, 1, 0])).loss.backward()
        return model, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain_model, plain = gradients(checkpointing=False)
    model, checkpointed = gradients(checkpointing=True)

    assert model.supports_gradient_checkpointing and model.dual_attention_resnet.backbone.grad_checkpointing
    assert not plain_model.dual_attention_resnet.backbone.grad_checkpointing
    assert set(checkpointed) == set(plain) and any(".layer3." in name for name in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    model.gradient_checkpointing_disable()
    assert not model.dual_attention_resnet.backbone.grad_checkpointing


# ---- Spatial-attention variants (issue: attention maps that point at the node)


@pytest.mark.parametrize(
    ("overrides", "map_side", "new_keys"),
    [
        ({}, TINY_MAP, set()),
        ({"spatial_attention_stages": [3]}, 2 * TINY_MAP, {"dual_attention_resnet.stage3_attention.conv.weight"}),
        ({"spatial_attention_stages": [3, 4]}, 2 * TINY_MAP, {"dual_attention_resnet.stage3_attention.conv.weight"}),
        ({"attention": "spatial", "spatial_attention_stages": 3}, 2 * TINY_MAP, set()),
        ({"spatial_gate": "conv_bn"}, TINY_MAP, {
            f"dual_attention_resnet.attention.spatial.bn.{name}"
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        }),
        ({"spatial_kernel_size": 3, "spatial_padding": "reflect"}, TINY_MAP, set()),
        ({"spatial_padding": "replicate"}, TINY_MAP, set()),
    ],
)
def test_spatial_variants_shapes_and_weight_names(overrides, map_side, new_keys):
    model = tiny_model(**overrides)
    with torch.no_grad():
        output = model(_pixels(), labels=torch.tensor([1, 0]))
    assert output.logits.shape == (2, 1) and torch.isfinite(output.loss)
    assert output.spatial_attention.shape == (2, 1, map_side, map_side)
    default_keys = set(tiny_model().state_dict())
    keys = set(model.state_dict())
    if overrides.get("attention") == "spatial":  # no channel branch; the spatial one moves to stage 3
        assert not any(".attention." in key for key in keys)
        return
    if overrides.get("spatial_attention_stages") == [3]:
        default_keys.discard("dual_attention_resnet.attention.spatial.conv.weight")
    assert keys == default_keys | new_keys


def test_stage3_maps_stay_with_their_own_request_under_concurrent_forwards():
    """A served model answers requests from several threads; each must get its own stage-3 map."""
    model = tiny_model(spatial_attention_stages=[3])
    inputs = [_pixels(batch=1, seed=seed) for seed in range(4)]
    with torch.no_grad():
        expected = [model(x).spatial_attention for x in inputs]

        def forward(index):
            return index, model(inputs[index]).spatial_attention

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(forward, [i % 4 for i in range(24)]))
    for index, spatial in results:
        torch.testing.assert_close(spatial, expected[index])


def test_backbone_stage_names_stage_3_and_4_as_a_resnet_counts_them():
    resnet = timm.create_model(TINY_BACKBONE, num_classes=0)
    convnext = timm.create_model("test_convnext", num_classes=0)
    assert [backbone_stage(resnet, stage)[::2] for stage in (3, 4)] == [("layer3", 256), ("layer4", TINY_CHANNELS)]
    assert backbone_stage(resnet, 3).module is resnet.layer3
    assert [backbone_stage(convnext, stage).name for stage in (3, 4)] == ["stages.2", "stages.3"]
    for stage in (2, 5, True):
        with pytest.raises(ValueError, match=rf"one of \(4, 3\).*got {stage!r}"):
            backbone_stage(resnet, stage)


def test_a_stage_3_gate_on_a_backbone_whose_stages_are_nested_is_refused_in_one_line():
    """The gate runs the backbone module by module; stages inside another module (not a Sequential) cannot be."""

    class Body(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer3, self.layer4 = nn.Identity(), nn.Identity()

    backbone = nn.Module()
    backbone.stem, backbone.body = nn.Identity(), Body()
    backbone.feature_info = [{"module": name} for name in ("stem", "body.layer3", "body.layer4")]
    with pytest.raises(ValueError) as info:
        check_runs_stage_by_stage(backbone, "nested")
    assert "['body.layer3', 'body.layer4']" in str(info.value) and "\n" not in str(info.value)


def _tensors_kept_outside_weights(model) -> list:
    """Attributes of the model's modules that hold tensors, other than parameters and buffers."""
    kept = []
    for module_name, module in model.named_modules():
        for attribute, value in vars(module).items():
            values = value.values() if isinstance(value, dict) else [value]
            if attribute not in ("_parameters", "_buffers") and any(isinstance(v, torch.Tensor) for v in values):
                kept.append(f"{module_name}.{attribute}")
    return kept


def test_a_checkpointed_training_step_leaves_no_tensor_in_the_model():
    """The stage-3 map is a local of the forward: recomputation under gradient checkpointing leaves nothing behind."""
    model = tiny_model(spatial_attention_stages=[3]).train()
    model.gradient_checkpointing_enable()
    model(_pixels(), labels=torch.tensor([1, 0])).loss.backward()
    assert _tensors_kept_outside_weights(model) == []


def _hooked_stage3_gate(model):
    """The gate as it was until the checkpoint in tests/fixtures: a forward hook on stage 3's module."""
    base = model.dual_attention_resnet
    stage3 = base.backbone.get_submodule(base.backbone.feature_info[-2]["module"])
    return stage3.register_forward_hook(lambda module, args, output: output * base.stage3_attention(output))


@pytest.mark.parametrize(
    ("backbone", "size"),
    [("test_resnet", 64), ("test_convnext", 64), ("test_efficientnet", 64), ("test_byobnet", 64), ("test_nfnet", 64),
     ("regnetx_002", 64), ("densenet121", 64), ("vgg11", 64)],
)
def test_the_stage3_gate_runs_any_timm_cnn_as_a_hook_on_its_stage_3_would(backbone, size):
    """Run module by module, a backbone computes what timm's own `forward_intermediates` computes with the gate
    hooked onto stage 3's output: the same stage outputs (stage 3's gated), the same last-stage features."""
    torch.manual_seed(0)
    config = DualAttentionResNetConfig(backbone=backbone, spatial_attention_stages=[3], image_size=size)
    model = DualAttentionResNetForImageClassification(config).eval()
    base = model.dual_attention_resnet
    pixels = _pixels(batch=2, size=size)
    with torch.no_grad():
        features, hidden_states = base.forward_intermediates(pixels)
        hook = _hooked_stage3_gate(model)
        try:
            hooked_features, hooked_states = base.backbone.forward_intermediates(pixels)
        finally:
            hook.remove()
        ungated = base.backbone.forward_features(pixels)

    torch.testing.assert_close(features, hooked_features, rtol=0, atol=1e-6)
    assert len(hidden_states) == len(hooked_states) == len(base.backbone.feature_info)
    for got, expected in zip(hidden_states, hooked_states, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(features, ungated)  # the gate changed something


STAGE3_GATE_V1 = Path(__file__).parent / "fixtures" / "stage3_gate_v1"


def test_a_checkpoint_saved_before_the_gate_became_a_module_loads_with_identical_outputs():
    """A checkpoint written when the stage-3 gate was a forward hook (tests/fixtures/make_stage3_gate_v1.py, run
    at commit 5d4c9ef) loads without missing or unexpected weights and computes what it computed then: logits,
    both attention outputs, every hidden state (stage 3's gated) and explain()'s maps, Grad-CAM on the
    gated stage 3 included."""
    expected = np.load(STAGE3_GATE_V1 / "expected.npz")
    model, loading = DualAttentionResNetForImageClassification.from_pretrained(STAGE3_GATE_V1, output_loading_info=True)
    pixel_values = torch.from_numpy(expected["pixel_values"])
    with torch.no_grad():
        output = model(pixel_values, output_hidden_states=True)
    got = {
        "logits": output.logits,
        "spatial_attention": output.spatial_attention,
        "channel_attention": output.channel_attention,
        **{f"hidden_state_{i}": state for i, state in enumerate(output.hidden_states)},
        **{f"explain_{name}": value for name, value in explain(model, pixel_values).items()},
    }
    model.config.gradcam_stage = 3
    got["explain_stage3_gradcam"] = explain(model, pixel_values)["gradcam"]

    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    assert model.config.spatial_attention_stages == [3] and model.dual_attention_resnet.stage3_attention is not None
    assert set(got) == set(expected) - {"pixel_values"}
    assert expected["explain_stage3_gradcam"].max() == 1.0  # a map that can disagree
    for name, value in got.items():
        np.testing.assert_allclose(value.numpy(), expected[name], rtol=0, atol=1e-6, err_msg=name)


def test_default_config_keeps_the_paper_weight_names():
    keys = set(tiny_model().state_dict())
    backbone_keys = {"dual_attention_resnet.backbone." + name for name in timm.create_model(TINY_BACKBONE).state_dict()}
    assert keys - backbone_keys == {
        "dual_attention_resnet.attention.channel.fc1.weight", "dual_attention_resnet.attention.channel.fc1.bias",
        "dual_attention_resnet.attention.channel.fc2.weight", "dual_attention_resnet.attention.channel.fc2.bias",
        "dual_attention_resnet.attention.spatial.conv.weight", "classifier.weight", "classifier.bias",
    }
    assert backbone_keys - keys == {
        "dual_attention_resnet.backbone.fc.weight", "dual_attention_resnet.backbone.fc.bias"
    }


def test_replicate_padding_sees_no_border_and_reflect_refuses_a_map_too_small():
    """A constant map stays constant through a replicate-padded conv; zero padding makes its border differ."""
    constant = torch.ones(1, 8, 5, 5)
    for padding, varies in (("zeros", True), ("replicate", False)):
        module = DualAttention(8, "spatial", kernel_size=3, padding_mode=padding)
        with torch.no_grad():
            module.spatial.conv.weight.fill_(0.1)
            weights = module(constant)[2]
        assert bool(weights.std() > 1e-3) == varies, padding
    model = tiny_model(spatial_padding="reflect")  # 7x7 kernel, padding 3, on the 2x2 last-stage map
    with pytest.raises(ValueError, match=r"`spatial_padding='reflect'` needs a map larger than 3 .*\(2, 2\)"):
        model(_pixels())


def _hand_map(peak):
    weights = torch.full((1, 1, 4, 4), 0.1)
    weights[0, 0, peak[0], peak[1]] = 0.9
    return weights


def test_attention_supervision_loss_is_larger_for_a_map_that_misses_the_lesion():
    mask = torch.zeros(1, 64, 64)
    mask[0, 2:10, 3:12] = 1  # inside the top-left 16 x 16 cell of a 4 x 4 map
    positive = torch.tensor([1])

    hit = attention_supervision_loss(_hand_map((0, 0)), mask, positive)
    miss = attention_supervision_loss(_hand_map((3, 3)), mask, positive)

    # hit: every cell right with confidence 0.9; miss: two cells wrong with confidence 0.9.
    assert hit.item() == pytest.approx(-math.log(0.9))
    assert miss.item() == pytest.approx((2 * -math.log(0.1) + 14 * -math.log(0.9)) / 16)
    assert miss > hit
    # Negative slices and positive slices without a lesion are not counted.
    assert attention_supervision_loss(_hand_map((3, 3)), mask, torch.tensor([0])).item() == 0.0
    assert attention_supervision_loss(_hand_map((3, 3)), torch.zeros(1, 64, 64), positive).item() == 0.0
    both = attention_supervision_loss(
        torch.cat([_hand_map((0, 0)), _hand_map((3, 3))]), torch.cat([mask, mask]), torch.tensor([1, 0])
    )
    assert both.item() == pytest.approx(hit.item())


@pytest.mark.parametrize("stages", [[4], [3]])
def test_attention_supervision_adds_to_the_loss_and_reaches_the_spatial_conv(stages):
    mask = torch.zeros(2, TINY_SIZE, TINY_SIZE)
    mask[0, 5:20, 40:60] = 1
    labels = torch.tensor([1, 0])
    supervised = tiny_model(spatial_attention_stages=stages, attention_loss_weight=2.0, dropout=0.0)
    plain = tiny_model(spatial_attention_stages=stages, dropout=0.0)

    output = supervised(_pixels(), labels=labels, lesion_mask=mask)
    plain_output = plain(_pixels(), labels=labels, lesion_mask=mask)  # weight 0: the mask is ignored
    expected_extra = 2.0 * attention_supervision_loss(output.spatial_attention, mask, labels)
    torch.testing.assert_close(output.loss, plain_output.loss + expected_extra)

    base = supervised.dual_attention_resnet
    spatial_conv = (base.stage3_attention if stages == [3] else base.attention.spatial).conv
    (output.loss - plain_output.loss.detach()).backward()
    assert spatial_conv.weight.grad is not None and spatial_conv.weight.grad.abs().sum() > 0


def test_attention_supervision_runs_under_bf16_autocast():
    """BCE on probabilities is refused under CUDA autocast; the loss is written out in float32 instead."""
    mask = torch.zeros(2, TINY_SIZE, TINY_SIZE)
    mask[0, 5:20, 40:60] = 1
    model = tiny_model(spatial_attention_stages=[3], attention_loss_weight=1.0).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(_pixels(), labels=torch.tensor([1, 0]), lesion_mask=mask).loss
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert model.dual_attention_resnet.stage3_attention.conv.weight.grad.abs().sum() > 0
