"""benchmarks/attention_study.py's diagnosis: does a spatial map depend on the image, and where does it peak?"""

import math

import pytest
import torch

from benchmarks.attention_study import VARIANTS, grid_pointing_ceiling, peak_statistics


def test_one_map_for_every_image_is_a_fixed_prior_and_maps_that_follow_the_lesion_are_not():
    lesion_masks = torch.zeros(4, 8, 8)
    for index, (row, column) in enumerate([(0, 0), (0, 6), (6, 0), (6, 6)]):  # one lesion per 4 x 4 cell
        lesion_masks[index, row : row + 2, column : column + 2] = 1
    fixed = torch.tensor([[0.1, 0.2], [0.3, 0.9]]).expand(4, 2, 2)
    prior = peak_statistics(fixed, lesion_masks, [0, 1, 2, 3])
    assert prior["grid"] == [2, 2] and prior["peak_counts"] == [[0, 0], [0, 4]]
    assert prior["lesion_counts"] == [[1, 1], [1, 1]]
    assert prior["modal_peak_share"] == 1.0
    assert prior["mean_pairwise_correlation"] == pytest.approx(1.0)
    assert prior["mean_range"] == pytest.approx(0.8)
    assert prior["cell_hits"] == 0.25  # only the lesion in the bottom-right cell

    following = torch.full((4, 2, 2), 0.2)
    for index, (row, column) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        following[index, row, column] = 0.6
    content = peak_statistics(following, lesion_masks, [0, 1, 2, 3])
    assert content["peak_counts"] == [[1, 1], [1, 1]] and content["cell_hits"] == 1.0
    assert content["modal_peak_share"] == 0.25
    # two one-hot maps of 4 cells with different peaks: Pearson correlation -1/3
    assert content["mean_pairwise_correlation"] == pytest.approx(-1 / 3)


def test_negative_slices_count_in_the_peaks_but_not_in_the_lesion_hits():
    maps = torch.zeros(3, 2, 2)
    maps[:, 0, 0] = 1.0
    lesion_masks = torch.zeros(1, 4, 4)
    lesion_masks[0, :2, :2] = 1
    stats = peak_statistics(maps, lesion_masks, [2])
    assert stats["n"] == 3 and stats["n_lesion"] == 1 and stats["cell_hits"] == 1.0
    assert stats["peak_counts"] == [[3, 0], [0, 0]]
    empty = peak_statistics(maps, torch.zeros(1, 4, 4), [2])  # a mask with no lesion pixel is left out
    assert empty["n_lesion"] == 0 and math.isnan(empty["cell_hits"])


def test_the_paper_variant_is_spelled_out_so_a_new_quickstart_recipe_cannot_change_it():
    assert VARIANTS["paper"] == {"spatial_attention_stages": [4], "spatial_gate": "conv", "spatial_padding": "zeros",
                                 "spatial_kernel_size": 7, "attention_loss_weight": 0.0}


def test_a_coarse_grid_cannot_point_at_a_small_lesion_far_from_its_cells_centre():
    masks = torch.zeros(2, 32, 32)  # a 4 x 4 grid: 8 px cells, centred at 3.5 px; tolerance 0.03 * 32 px
    masks[0, 2:6, 2:6] = 1  # covers the centre of cell (0, 0)
    masks[1, 0:2, 0:2] = 1  # in the corner of the same cell
    assert grid_pointing_ceiling(masks, (4, 4)) == 0.5
    assert grid_pointing_ceiling(masks, (16, 16)) == 1.0  # 2 px cells: every lesion holds a cell centre
