"""Pointing game and coordinate mappings of medst.eval.grounding."""

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

matplotlib.use("Agg")

from medst.eval.grounding import (
    GroundingItem,
    PixelAffine,
    chance_hit_rate,
    letterbox_affine,
    load_boxes,
    patch_centers,
    plot_attention,
    pointing_game,
    pointing_hit,
    split_views,
)


def reference_letterbox(point, height, width, resize, crop):
    """Follow one point through resize, centred zero padding and centre crop, step by step."""
    x, y = point
    scale = resize / max(height, width)
    new_w, new_h = round(width * scale), round(height * scale)
    x, y = x * new_w / width, y * new_h / height
    x, y = x + (resize - new_w) // 2, y + (resize - new_h) // 2
    cut = round((resize - crop) / 2)
    return x - cut, y - cut


@pytest.mark.parametrize("height,width", [(300, 200), (200, 300), (256, 256), (97, 131)])
def test_letterbox_affine_matches_step_by_step_and_round_trips(height, width):
    affine = letterbox_affine(height, width, resize=256, crop=224)
    rng = np.random.default_rng(0)
    points = rng.uniform(0, [width, height], size=(20, 2))
    mapped = affine.to_model(points)
    want = np.array([reference_letterbox(p, height, width, 256, 224) for p in points])
    np.testing.assert_allclose(mapped, want, rtol=1e-12)
    np.testing.assert_allclose(affine.to_original(mapped), points, rtol=1e-12)
    boxes = np.array([[10, 20, 50, 80], [0, 0, width, height]], dtype=float)
    np.testing.assert_allclose(affine.boxes_to_original(affine.boxes_to_model(boxes)), boxes, atol=1e-9)


def test_letterbox_affine_follows_a_real_image_pipeline():
    """A bright square sent through PIL resize, zero padding and CenterCrop lands where the affine says."""
    from PIL import Image
    from torchvision.transforms import CenterCrop

    height, width, resize, crop = 300, 200, 128, 112
    original = np.zeros((height, width), dtype=np.uint8)
    original[150:190, 40:80] = 255  # x 40..80, y 150..190
    scale = resize / max(height, width)
    new_w, new_h = round(width * scale), round(height * scale)
    resized = np.asarray(Image.fromarray(original).resize((new_w, new_h), Image.BILINEAR), dtype=float)
    square = np.zeros((resize, resize))
    top, left = (resize - new_h) // 2, (resize - new_w) // 2
    square[top : top + new_h, left : left + new_w] = resized
    model_input = CenterCrop(crop)(torch.tensor(square)[None])[0].numpy()
    ys, xs = np.nonzero(model_input > 127)
    found = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    want = letterbox_affine(height, width, resize, crop).boxes_to_model([[40, 150, 80, 190]])[0]
    np.testing.assert_allclose(found, want, atol=1.0)


def test_letterbox_image_corners():
    """The whole image fills the long side and is centred on the short side."""
    affine = letterbox_affine(100, 50, resize=64, crop=None)
    np.testing.assert_allclose(affine.to_model([[0, 0], [50, 100]]), [[16, 0], [48, 64]])


def test_patch_centers_row_major():
    centres = patch_centers((2, 3), (20, 30))
    np.testing.assert_allclose(centres, [[5, 5], [15, 5], [25, 5], [5, 15], [15, 15], [25, 15]])


def one_hot_map(grid, row, col):
    attention = np.zeros(grid[0] * grid[1])
    attention[row * grid[1] + col] = 1.0
    return attention


def test_pointing_hit_with_known_box():
    grid, size = (4, 4), 64
    identity = PixelAffine(1.0, 1.0, 0.0, 0.0)
    box = np.array([[32, 0, 48, 16]])  # covers the cell at row 0, column 2 (centre (40, 8))
    assert pointing_hit(one_hot_map(grid, 0, 2), box, identity, grid, size)
    assert not pointing_hit(one_hot_map(grid, 0, 1), box, identity, grid, size)
    assert not pointing_hit(one_hot_map(grid, 1, 2), box, identity, grid, size)
    # A [h, w] tensor works as well.
    assert pointing_hit(torch.tensor(one_hot_map(grid, 0, 2)).view(4, 4), box, identity, grid, size)


def test_pointing_hit_through_letterbox():
    """A box in original pixels of a portrait image maps onto the right patch of the padded input."""
    grid, size = (8, 8), 64
    affine = letterbox_affine(200, 100, resize=64, crop=None)  # width 32 + padding 16 each side
    cell_centre = patch_centers(grid, size)[3 * 8 + 5]  # row 3, col 5 -> (44, 28) in the input
    x, y = affine.to_original(cell_centre)
    box = np.array([[x - 3, y - 3, x + 3, y + 3]])
    assert pointing_hit(one_hot_map(grid, 3, 5), box, affine, grid, size)
    assert not pointing_hit(one_hot_map(grid, 3, 6), box, affine, grid, size)


def test_split_views():
    grid = (2, 2)
    assert list(split_views(np.arange(4), grid)) == ["frontal"]
    views = split_views(np.arange(8.0), grid)
    np.testing.assert_array_equal(views["lateral"], [4, 5, 6, 7])
    with pytest.raises(ValueError, match="N = 4"):
        split_views(np.arange(6), grid)


def test_pointing_game_counts():
    grid, size = (4, 4), 64
    identity = PixelAffine(1.0, 1.0, 0.0, 0.0)
    boxes = pd.DataFrame(
        [
            ("f1", "frontal", "effusion", 32, 0, 48, 16),  # row 0, col 2
            ("l1", "lateral", "effusion", 0, 48, 16, 64),  # row 3, col 0
            ("f1", "frontal", "edema", 0, 0, 16, 16),  # row 0, col 0
            ("f2", "frontal", "pneumothorax", 0, 0, 64, 16),
        ],
        columns=["dicom_id", "view", "finding", "x_min", "y_min", "x_max", "y_max"],
    )
    words = ["small", "effusions", "and", "edema", ""]
    attention = np.zeros((5, 32))
    attention[1, :16] = one_hot_map(grid, 0, 2)  # frontal: hit
    attention[1, 16:] = one_hot_map(grid, 0, 0)  # lateral: miss (box at row 3)
    attention[3, :16] = one_hot_map(grid, 2, 2)  # edema: miss
    study1 = GroundingItem(attention, words, {"frontal": ("f1", identity), "lateral": ("l1", identity)})
    # Study 2 has a box but its report does not name the finding: no trial.
    study2 = GroundingItem(np.ones((2, 16)), ["no", "change"], {"frontal": ("f2", identity)})
    result = pointing_game([study1, study2], boxes, grid=grid, input_size=size)
    assert (result["hits"], result["total"]) == (1, 3)
    assert result["accuracy"] == pytest.approx(1 / 3)
    # Chance: each box of study 1 holds exactly 1 of the 16 patch centres.
    assert result["per_finding"]["effusion"] == {"hits": 1, "total": 2, "accuracy": 0.5, "chance": 1 / 16}
    assert result["per_finding"]["edema"]["total"] == 1
    assert math.isnan(result["per_finding"]["pneumothorax"]["accuracy"])
    assert result["per_view"]["lateral"] == {"hits": 0, "total": 1, "accuracy": 0.0, "chance": 1 / 16}
    assert result["chance"] == pytest.approx(1 / 16)


def test_chance_hit_rate_counts_patch_centres():
    grid, size = (4, 4), 64
    identity = PixelAffine(1.0, 1.0, 0.0, 0.0)
    assert chance_hit_rate([[0, 0, 64, 16]], identity, grid, size) == 4 / 16  # the whole top row
    assert chance_hit_rate([[0, 0, 64, 16], [0, 0, 20, 39]], identity, grid, size) == 5 / 16  # + (8, 24)
    assert chance_hit_rate([[1, 1, 2, 2]], identity, grid, size) == 0.0


def test_load_boxes_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="boxes.csv"):
        load_boxes(tmp_path / "boxes.csv")
    path = tmp_path / "bad.csv"
    pd.DataFrame({"dicom_id": ["a"], "x_min": [1]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="bad.csv: missing columns"):
        load_boxes(path)


def test_plot_attention_draws_boxes():
    affine = letterbox_affine(128, 64, resize=64, crop=None)
    ax = plot_attention(
        np.zeros((3, 64, 64)), torch.rand(16), np.array([[0, 0, 64, 128]]), title="effusion", affine=affine
    )
    (rect,) = ax.patches
    assert (rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()) == (16, 0, 32, 64)
    assert ax.get_title() == "effusion"
