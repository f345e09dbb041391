"""modeling.explain: one-pass maps, agreement with pytorch-grad-cam, a map whose answer is known, overlays."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import GATED_GRID, GATED_SIZE, TINY_SIZE, region_gated_model, structured_pixels, tiny_model
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from modeling import DualAttentionResNetConfig, DualAttentionResNetForImageClassification
from modeling.explain import (
    LogitsOnly,
    explain,
    gradcam_title,
    overlay,
    scale_to_unit,
    target_layer,
    target_layer_name,
    tokens_to_grid,
)


def random_pixels(batch=2, size=TINY_SIZE, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def library_gradcam(model, pixel_values, reshape_transform=None):
    """pytorch-grad-cam's usual GradCAM on the same layer, targeting the single logit."""
    with GradCAM(LogitsOnly(model), [target_layer(model)], reshape_transform=reshape_transform) as cam:
        return cam(input_tensor=pixel_values, targets=[ClassifierOutputTarget(0)] * len(pixel_values))


@pytest.mark.parametrize("attention", ["dual", "spatial", "channel", "none"])
def test_shapes_ranges_and_probability_equal_the_models_sigmoid(attention):
    model = tiny_model(attention=attention)
    pixel_values = structured_pixels(size=96)
    with torch.no_grad():
        expected = torch.sigmoid(model(pixel_values).logits[:, 0].double())  # explain answers in float64

    maps = explain(model, pixel_values)

    assert maps["probability"].shape == (2,)
    torch.testing.assert_close(maps["probability"], expected, rtol=0, atol=1e-6)
    assert maps["gradcam"].shape == (2, 96, 96)
    assert torch.isfinite(maps["gradcam"]).all()
    assert maps["gradcam"].min() >= 0 and maps["gradcam"].max() <= 1
    if attention in ("dual", "spatial"):
        assert maps["attention"].shape == (2, 96, 96)
        # min-max scaled per image: each map spans exactly [0, 1]
        torch.testing.assert_close(maps["attention"].flatten(1).amin(1), torch.zeros(2))
        torch.testing.assert_close(maps["attention"].flatten(1).amax(1), torch.ones(2))
    else:
        assert maps["attention"] is None


def test_explains_in_eval_mode_restores_train_mode_and_leaves_no_parameter_gradients():
    model = tiny_model(dropout=0.9)
    pixel_values = structured_pixels()
    with torch.no_grad():
        expected = torch.sigmoid(model(pixel_values).logits[:, 0].double())  # explain answers in float64
    model.train()

    maps = explain(model, pixel_values)

    # dropout 0.9 in train mode would change the probability; explain ran in eval mode
    torch.testing.assert_close(maps["probability"], expected, rtol=0, atol=1e-6)
    assert model.training
    assert not model.dual_attention_resnet.backbone.bn1.training  # frozen stem BatchNorm stays in eval
    assert all(parameter.grad is None for parameter in model.parameters())


def test_leaves_the_callers_grad_mode_as_it_was():
    model = tiny_model()
    model.classifier.weight.data.abs_()  # a non-zero map, so the comparison below means something
    with torch.no_grad():
        inside = explain(model, structured_pixels())
        assert not torch.is_grad_enabled()
    outside = explain(model, structured_pixels())

    assert torch.is_grad_enabled()
    torch.testing.assert_close(inside["gradcam"], outside["gradcam"])
    assert inside["gradcam"].max() == 1.0


@pytest.mark.parametrize(
    "backbone, attention, size, pixels, stage",
    [
        ("resnet10t", "dual", 96, structured_pixels, 4),
        ("resnet10t", "dual", 96, random_pixels, 4),
        ("resnet10t", "none", 96, structured_pixels, 4),
        ("resnet18", "spatial", 64, random_pixels, 4),
        ("resnet10t", "dual", 96, structured_pixels, 3),
        ("resnet18", "dual", 64, random_pixels, 3),
    ],
)
def test_gradcam_matches_pytorch_grad_cam_on_the_same_layer(backbone, attention, size, pixels, stage):
    torch.manual_seed(1)
    config = DualAttentionResNetConfig(backbone=backbone, attention=attention, gradcam_stage=stage)
    model = DualAttentionResNetForImageClassification(config)
    # random signs can make every weighted activation negative, i.e. an all-zero map
    model.eval().classifier.weight.data.abs_()
    pixel_values = pixels(size=size)

    ours = explain(model, pixel_values)["gradcam"].numpy()
    reference = library_gradcam(model, pixel_values)

    assert target_layer(model) is model.dual_attention_resnet.backbone.get_submodule(f"layer{stage}")
    for image in range(len(pixel_values)):
        assert reference[image].max() > 0
        assert np.corrcoef(ours[image].ravel(), reference[image].ravel())[0, 1] >= 0.99
    np.testing.assert_allclose(ours, reference, atol=1e-3)


def test_stage3_gradcam_behind_the_stage3_gate_explains_the_gated_features_and_matches_pytorch_grad_cam():
    torch.manual_seed(1)
    config = DualAttentionResNetConfig(backbone="resnet10t", spatial_attention_stages=[3], gradcam_stage=3)
    model = DualAttentionResNetForImageClassification(config).eval()
    model.classifier.weight.data.abs_()
    pixel_values = structured_pixels(size=96)
    seen = []
    hook = target_layer(model).register_forward_hook(lambda module, args, output: seen.append(output))
    with torch.no_grad():
        output = model(pixel_values, output_hidden_states=True)
    hook.remove()

    ours = explain(model, pixel_values)["gradcam"].numpy()
    reference = library_gradcam(model, pixel_values)

    assert target_layer(model) is model.dual_attention_resnet.gated_stage3_output
    torch.testing.assert_close(seen[0], output.hidden_states[3], rtol=0, atol=0)  # stage 3 after the gate
    for image in range(len(pixel_values)):
        assert reference[image].max() > 0
        assert np.corrcoef(ours[image].ravel(), reference[image].ravel())[0, 1] >= 0.99
    np.testing.assert_allclose(ours, reference, atol=1e-3)


def test_vit_gradcam_uses_the_last_blocks_norm_and_matches_pytorch_grad_cam():
    torch.manual_seed(0)
    # timm's test_vit: 160 px, patch 16, one class token -> a 10 x 10 patch grid
    config = DualAttentionResNetConfig(backbone="test_vit", attention="none")
    model = DualAttentionResNetForImageClassification(config).eval()
    backbone = model.dual_attention_resnet.backbone
    pixel_values = structured_pixels(size=160)

    maps = explain(model, pixel_values)
    reference = library_gradcam(model, pixel_values, lambda tokens: tokens_to_grid(tokens, backbone, (160, 160)))

    assert target_layer_name(backbone) == f"blocks.{len(backbone.blocks) - 1}.norm1"
    assert maps["attention"] is None and maps["gradcam"].shape == (2, 160, 160)
    for image in range(2):
        assert maps["gradcam"][image].max() == 1.0  # patch tokens have a gradient at this layer
        assert np.corrcoef(maps["gradcam"][image].numpy().ravel(), reference[image].ravel())[0, 1] >= 0.99


def test_tokens_to_grid_drops_prefix_tokens_and_keeps_row_major_patch_order():
    backbone = SimpleNamespace(num_prefix_tokens=1, patch_embed=SimpleNamespace(patch_size=(16, 16)))
    # batch 1, class token then 2 x 3 patches, 2 dims: dim 0 = patch index, dim 1 = its negative
    tokens = torch.tensor([[[-1.0, -1.0]] + [[float(i), -float(i)] for i in range(6)]])

    grid = tokens_to_grid(tokens, backbone, (32, 48))

    torch.testing.assert_close(grid[0, 0], torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]))
    torch.testing.assert_close(grid[0, 1], -grid[0, 0])


@pytest.mark.parametrize("cell", [(0, 3), (2, 1)])
def test_gradcam_peak_lies_in_the_only_region_the_logit_depends_on(cell):
    model = region_gated_model(cell)
    pixel_values = structured_pixels(size=GATED_SIZE)

    gradcam = explain(model, pixel_values)["gradcam"]

    step = GATED_SIZE // GATED_GRID
    for image in range(len(pixel_values)):
        row, col = np.unravel_index(int(gradcam[image].argmax()), gradcam[image].shape)
        assert (row // step, col // step) == cell
        # the map is zero away from the cell (bilinear spill reaches at most half a cell beyond it)
        far = torch.ones(GATED_SIZE, GATED_SIZE, dtype=torch.bool)
        rows, cols = [slice(max(0, (c - 1) * step), (c + 2) * step) for c in cell]
        far[rows, cols] = False
        assert gradcam[image][far].max() == 0


def test_a_map_with_no_positive_evidence_is_all_zeros_not_nan():
    model = tiny_model(attention="none")
    # layer4 ends in a ReLU, so with negative classifier weights every weighted activation is <= 0
    model.classifier.weight.data = -model.classifier.weight.data.abs()

    gradcam = explain(model, structured_pixels())["gradcam"]

    assert torch.equal(gradcam, torch.zeros_like(gradcam))


@pytest.mark.parametrize("method", ["gradcam++", "eigencam"])
def test_other_cam_methods_come_from_pytorch_grad_cam(method):
    model = tiny_model()
    pixel_values = structured_pixels(size=96)
    one_pass = explain(model, pixel_values)
    model.train()

    maps = explain(model, pixel_values, method=method)

    torch.testing.assert_close(maps["probability"], one_pass["probability"])
    torch.testing.assert_close(maps["attention"], one_pass["attention"])
    assert maps["gradcam"].shape == (2, 96, 96)
    assert maps["gradcam"].min() >= 0 and maps["gradcam"].max() <= 1
    assert model.training
    assert all(parameter.grad is None for parameter in model.parameters())


def test_unknown_method_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"`method` must be one of .*gradcam\+\+.*got 'gradcam2'"):
        explain(tiny_model(), random_pixels(), method="gradcam2")


def test_scale_to_unit_against_hand_computed_maps():
    maps = torch.tensor([[[0.0, 2.0], [4.0, 8.0]], [[3.0, 3.0], [3.0, 3.0]], [[-1.0, 1.0], [0.0, 0.0]]])

    torch.testing.assert_close(
        scale_to_unit(maps),
        torch.tensor([[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.5, 0.5]]]),
    )


def test_overlay_blends_grey_and_jet_colours_as_hand_computed():
    # jet(0) = (0, 0, 0.5), jet(1) = (0.5, 0, 0); alpha 0.4 on the map, 0.6 on the grey slice
    unit = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    heat = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)

    image = overlay(unit, heat)

    assert image.dtype == np.uint8 and image.shape == (2, 2, 3)
    np.testing.assert_array_equal(image[0, 0], [51, 0, 0])
    np.testing.assert_array_equal(image[0, 1], [153, 153, 204])
    np.testing.assert_array_equal(image[1, 0], [0, 0, 51])
    np.testing.assert_array_equal(image[1, 1], [204, 153, 153])


def test_overlay_resizes_a_model_resolution_map_to_the_slice():
    unit = np.full((8, 8), 0.25, dtype=np.float32)

    image = overlay(unit, torch.ones(4, 4))

    # 0.6 * 0.25 grey + 0.4 * jet(1) = (0.35, 0.15, 0.15) everywhere
    assert image.shape == (8, 8, 3)
    np.testing.assert_array_equal(image, np.broadcast_to(np.array([89, 38, 38], dtype=np.uint8), (8, 8, 3)))


def test_overlay_refuses_a_batch_of_maps():
    with pytest.raises(ValueError, match="2-D slice and map"):
        overlay(np.zeros((8, 8)), np.zeros((2, 8, 8)))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_explain_works_on_a_model_set_up_for_gradient_checkpointing(method):
    """timm's checkpointing calls a stage's blocks itself, past the hook Grad-CAM reads: explain turns it
    off for its own forward, gives the maps of the plain model, and leaves it on for training."""
    model = tiny_model().eval()
    pixels = random_pixels()
    expected = explain(model, pixels, method=method)
    model.gradient_checkpointing_enable()
    explained = explain(model, pixels, method=method)
    for key in ("probability", "attention", "gradcam"):
        torch.testing.assert_close(explained[key], expected[key])
    assert model.dual_attention_resnet.backbone.grad_checkpointing


def test_stage_3_gradcam_is_twice_as_fine_and_follows_the_config():
    """Set on a trained model (no weight changes): the map comes from a grid twice as fine."""
    from modeling.explain import _gradcam

    model = tiny_model()
    pixel_values = structured_pixels(size=128)
    assert _gradcam(model, pixel_values)[2].shape == (2, 4, 4)  # resnet10t at 128 px: stage 4 is 4 x 4
    assert gradcam_title(model.config) == "Grad-CAM (last backbone stage)"
    model.config.gradcam_stage = 3
    assert _gradcam(model, pixel_values)[2].shape == (2, 8, 8)
    assert explain(model, pixel_values)["gradcam"].shape == (2, 128, 128)
    assert gradcam_title(model.config) == "Grad-CAM (backbone stage 3)"


def test_stage_3_gradcam_is_refused_for_token_models_and_bad_stages():
    model = DualAttentionResNetForImageClassification(
        DualAttentionResNetConfig(backbone="test_vit", attention="none", gradcam_stage=3)).eval()
    with pytest.raises(ValueError, match="gradcam_stage=3 needs a CNN backbone"):
        explain(model, structured_pixels(size=160))
    for bad in (2, "3", True):
        with pytest.raises(ValueError, match="`gradcam_stage` must be one of"):
            DualAttentionResNetConfig(gradcam_stage=bad)
    cnn = tiny_model()
    cnn.config.gradcam_stage = 2  # set on a loaded model, past the config's own check
    with pytest.raises(ValueError, match="`gradcam_stage` must be one of"):
        explain(cnn, structured_pixels())
