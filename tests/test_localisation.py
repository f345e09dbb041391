"""training.localisation: pointing game and energy in mask, hand-computed and on a model whose answer is known."""

import numpy as np
import pytest
import torch
from conftest import GATED_GRID, GATED_SIZE, region_gated_model, structured_pixels, tiny_model

from modeling.explain import explain
from training.localisation import energy_in_mask, localisation_metrics, pointing_chance, pointing_game_hits

STEP = GATED_SIZE // GATED_GRID


def cell_masks(cells, size=GATED_SIZE):
    """`(n, size, size)` uint8 masks, each covering the middle half of one last-stage cell `(row, col)`."""
    masks = torch.zeros(len(cells), size, size, dtype=torch.uint8)
    scale = size / GATED_SIZE
    for index, (row, col) in enumerate(cells):
        top, left = int((row * STEP + STEP // 4) * scale), int((col * STEP + STEP // 4) * scale)
        masks[index, top : top + int(STEP // 2 * scale), left : left + int(STEP // 2 * scale)] = 1
    return masks


def test_pointing_game_hits_within_the_euclidean_tolerance_only():
    maps = torch.zeros(3, 20, 20)
    maps[:, 10, 10] = 1.0  # peak at (10, 10)
    maps[2] = 0.5  # constant: points nowhere
    masks = torch.zeros(3, 20, 20)
    masks[:, 12:16, 12:16] = 1  # nearest mask pixel (12, 12) is sqrt(8) = 2.83 px away

    assert pointing_game_hits(maps, masks, tolerance_px=2.9).tolist() == [True, True, False]
    assert pointing_game_hits(maps, masks, tolerance_px=2.8).tolist() == [False, False, False]
    assert pointing_game_hits(maps, masks, tolerance_px=0).tolist() == [False, False, False]


def test_energy_in_mask_against_a_hand_computed_map():
    maps = torch.zeros(2, 6, 6)
    maps[0, :2, :2] = 1.0  # 4 px inside the mask: energy 4
    maps[0, 4:, :] = 0.5  # 12 px outside at 0.5: energy 6
    masks = torch.zeros(2, 6, 6, dtype=torch.uint8)
    masks[:, :2, :2] = 1

    np.testing.assert_allclose(energy_in_mask(maps, masks), [4 / 10, 0.0])  # an all-zero map has no energy


def test_pointing_chance_is_the_share_of_pixels_within_the_tolerance():
    masks = torch.zeros(1, 9, 9)
    masks[0, 4, 4] = 1

    # tolerance 1: the pixel and its 4 neighbours; tolerance 1.5 adds the 4 diagonals (1.41 px)
    np.testing.assert_allclose(pointing_chance(masks, 1.0), [5 / 81])
    np.testing.assert_allclose(pointing_chance(masks, 1.5), [9 / 81])


def test_gradcam_of_a_model_that_sees_one_region_points_there_and_misses_elsewhere():
    model = region_gated_model((1, 2))
    pixel_values = structured_pixels(batch=4, size=GATED_SIZE)
    # two slices with the lesion under the seen cell, two with it far away
    masks = cell_masks([(1, 2), (1, 2), (3, 0), (3, 0)])

    result = localisation_metrics(model, pixel_values, masks, batch_size=3)

    assert result["n"] == 4
    assert result["tolerance_px"] == pytest.approx(0.03 * GATED_SIZE)
    assert result["mask_area_fraction"] == pytest.approx(16 * 16 / GATED_SIZE**2)
    gradcam = result["gradcam"]
    assert gradcam["pointing_game"]["value"] == 0.5
    assert 0.0 <= gradcam["pointing_game"]["ci_low"] < 0.5 < gradcam["pointing_game"]["ci_high"] <= 1.0
    # the map is zero beyond one cell of the seen one: no energy in the far lesions, more than chance in the near
    per_slice = energy_in_mask(explain(model, pixel_values)["gradcam"], masks)
    np.testing.assert_array_equal(per_slice[2:], [0.0, 0.0])
    assert (per_slice[:2] > result["mask_area_fraction"]).all()
    assert gradcam["energy_in_mask"]["value"] == pytest.approx(per_slice.mean())
    assert set(result["attention"]) == {"pointing_game", "energy_in_mask"}


def test_patient_bootstrap_resamples_patients_not_slices():
    model = region_gated_model((1, 2))
    pixel_values = structured_pixels(batch=4, size=GATED_SIZE)
    masks = cell_masks([(1, 2), (3, 0), (1, 2), (3, 0)])

    by_patient = localisation_metrics(model, pixel_values, masks, patient_ids=["p1", "p1", "p2", "p2"])
    by_slice = localisation_metrics(model, pixel_values, masks)

    # every patient has one hit and one miss, so every patient resample scores exactly 0.5
    assert by_patient["gradcam"]["pointing_game"] == {"value": 0.5, "ci_low": 0.5, "ci_high": 0.5}
    assert by_slice["gradcam"]["pointing_game"]["ci_low"] < 0.5 < by_slice["gradcam"]["pointing_game"]["ci_high"]


def test_masks_at_another_size_are_resized_and_empty_ones_left_out():
    model = region_gated_model((1, 2), attention="channel")
    pixel_values = structured_pixels(batch=3, size=GATED_SIZE)
    masks = cell_masks([(1, 2), (1, 2), (1, 2)], size=GATED_SIZE // 2)
    masks[2] = 0

    result = localisation_metrics(model, pixel_values, masks.numpy())

    assert result["n"] == 2
    assert result["attention"] is None  # no spatial branch
    assert result["gradcam"]["pointing_game"]["value"] == 1.0


def test_no_usable_mask_gives_none():
    assert localisation_metrics(tiny_model(), structured_pixels(batch=2), torch.zeros(2, 64, 64)) is None
