"""coinlib.masks: difference maps, saliency normalisation, thresholding, post-processing."""

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from skimage.measure import label
from skimage.morphology import closing, disk, footprint_rectangle, opening

from coinlib.masks import (
    difference_map,
    largest_component,
    normalise_saliency,
    outside_body_share,
    postprocess_mask,
    postprocess_masks,
    weak_mask,
)


def test_difference_map_is_on_the_unit_scale_for_numpy_and_torch():
    x = np.array([[[[1.0, -1.0], [0.5, 0.0]]]], dtype=np.float32)  # (1, 1, 2, 2)
    x_cf = np.array([[[[-1.0, -1.0], [0.0, 0.5]]]], dtype=np.float32)
    expected = np.array([[[[1.0, 0.0], [0.25, 0.25]]]])
    np.testing.assert_allclose(difference_map(x, x_cf), expected)
    out = difference_map(torch.from_numpy(x), torch.from_numpy(x_cf))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(out.numpy(), expected)
    with pytest.raises(TypeError):
        difference_map(x, torch.from_numpy(x_cf))


def test_outside_body_share_by_hand():
    diff = np.zeros((4, 4))
    diff[0, 0], diff[2, 2] = 0.3, 0.1  # 0.3 in the air, 0.1 inside
    body = np.zeros((4, 4), bool)
    body[1:, 1:] = True
    assert outside_body_share(diff, body) == pytest.approx(0.75)
    assert outside_body_share(np.zeros((4, 4)), body) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        outside_body_share(diff, body[:2])


def test_normalise_saliency_is_min_max_per_image_and_zero_for_constant_maps():
    s = np.stack([np.array([[2.0, 4.0], [6.0, 10.0]]), np.full((2, 2), 3.0)])[:, None]  # (2, 1, 2, 2)
    expected = np.stack([np.array([[0.0, 0.25], [0.5, 1.0]]), np.zeros((2, 2))])[:, None]
    np.testing.assert_allclose(normalise_saliency(s), expected)
    np.testing.assert_allclose(normalise_saliency(torch.from_numpy(s)).numpy(), expected)


def test_weak_mask_thresholds_strictly_and_keeps_the_input_kind():
    d = np.array([[0.1, 0.25], [0.3, 0.9]], dtype=np.float32)
    np.testing.assert_array_equal(
        weak_mask(d, 0.25, postprocess=False), [[False, False], [True, True]]
    )
    out = weak_mask(torch.from_numpy(d)[None, None], 0.25, postprocess=False)
    assert out.dtype == torch.bool and out.shape == (1, 1, 2, 2)
    # With post-processing a torch input comes back as a torch bool mask too.
    big = torch.zeros(1, 1, 16, 16)
    big[..., 4:10, 4:10] = 0.5
    out = weak_mask(big, 0.25)
    assert out.dtype == torch.bool and out.shape == big.shape
    np.testing.assert_array_equal(out.numpy(), weak_mask(big.numpy(), 0.25))
    assert out.sum() == 36 - 12  # a radius-2 disk opening rounds the square's corners


def test_closing_fills_a_one_pixel_hole():
    mask = np.zeros((15, 15), dtype=bool)
    mask[3:12, 3:12] = True
    mask[7, 7] = False
    out = postprocess_mask(mask, closing_radius=1, opening_radius=0)
    assert out[7, 7] and out.sum() == 81


def test_only_the_largest_component_is_kept():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:8, 2:8] = True  # 36 px
    mask[10:18, 10:18] = True  # 64 px: the one kept
    mask[0, 19] = True
    out = postprocess_mask(mask, closing_radius=0, opening_radius=0)
    np.testing.assert_array_equal(out, np.pad(np.ones((8, 8), bool), ((10, 2), (10, 2))))


def test_opening_removes_a_one_pixel_wide_spur():
    mask = np.zeros((20, 20), dtype=bool)
    mask[10:18, 10:18] = True
    mask[2:10, 14] = True  # spur 1 px wide
    out = postprocess_mask(mask, closing_radius=0, opening_radius=1)
    expected = np.zeros_like(mask)
    expected[10:18, 10:18] = True
    expected[[10, 10, 17, 17], [10, 17, 10, 17]] = False  # a cross footprint rounds the corners
    expected[9, 14] = True  # the spur's root: the cross centred below it fits in the mask
    np.testing.assert_array_equal(out, expected)


def test_empty_stays_empty_and_images_in_a_batch_are_independent():
    batch = np.zeros((3, 12, 12), dtype=bool)
    batch[0, 1:4, 1:4] = True  # small, but the only component of image 0
    batch[2, 5:11, 5:11] = True
    out = postprocess_masks(batch, 0, 0)
    np.testing.assert_array_equal(out, batch)
    assert postprocess_masks(np.zeros((2, 1, 8, 8), bool)).shape == (2, 1, 8, 8)
    assert not postprocess_masks(np.zeros((2, 1, 8, 8), bool)).any()


def test_largest_component_uses_8_connectivity_and_breaks_ties_in_raster_order():
    mask = np.zeros((1, 6, 6), dtype=bool)
    mask[0, 0, 0] = mask[0, 1, 1] = True  # diagonal neighbours: one 8-connected component
    mask[0, 4, 4] = mask[0, 4, 5] = True  # same size, later in raster order
    out = largest_component(mask)
    assert out[0, 0, 0] and out[0, 1, 1] and not out[0, 4].any()


def _skimage_reference(mask, closing_radius, opening_radius, morphology="paper"):
    out = mask
    if morphology == "implementation":  # the authors' code: opening, then closing, 3 x 3 square
        square = footprint_rectangle((3, 3))
        out = closing(opening(out, square, mode="ignore"), square, mode="ignore")
    else:
        if closing_radius:
            out = closing(out, disk(closing_radius), mode="ignore")
        if opening_radius:
            out = opening(out, disk(opening_radius), mode="ignore")
    labels = label(out, connectivity=2)
    if labels.max() == 0:
        return np.zeros_like(mask)
    return labels == 1 + np.argmax(np.bincount(labels.ravel())[1:])


@pytest.mark.parametrize("radii", [(2, 2), (1, 3), (3, 0), (0, 1)])
def test_postprocessing_matches_scikit_image_on_random_masks(radii):
    rng = np.random.default_rng(sum(radii))
    noise = ndi.gaussian_filter(rng.normal(size=(12, 40, 40)), (0, 1.5, 1.5))
    masks = noise > rng.uniform(0.0, 0.3, size=(12, 1, 1))
    ours = postprocess_masks(masks, *radii)
    for mask, got in zip(masks, ours):
        np.testing.assert_array_equal(got, _skimage_reference(mask, *radii))


def test_implementation_morphology_matches_scikit_image_on_random_masks():
    rng = np.random.default_rng(7)
    noise = ndi.gaussian_filter(rng.normal(size=(12, 40, 40)), (0, 1.0, 1.0))
    masks = noise > rng.uniform(0.0, 0.3, size=(12, 1, 1))
    ours = postprocess_masks(masks, morphology="implementation")
    assert not np.array_equal(ours, postprocess_masks(masks))  # the two orders differ here
    for mask, got in zip(masks, ours):
        np.testing.assert_array_equal(got, _skimage_reference(mask, 0, 0, "implementation"))
    # the same through weak_mask, for numpy and torch, and the radii are not used
    maps = noise.astype(np.float32)
    expected = postprocess_masks(maps > 0.1, 0, 0, "implementation")
    np.testing.assert_array_equal(weak_mask(maps, 0.1, True, 5, 5, "implementation"), expected)
    np.testing.assert_array_equal(weak_mask(torch.from_numpy(maps), 0.1, morphology="implementation").numpy(),
                                  expected)
    with pytest.raises(ValueError, match="morphology"):
        postprocess_masks(masks, morphology="closing")


def test_the_two_rules_by_hand():
    # two 4 x 4 squares 1 px apart. Implementation: the 3 x 3 opening keeps both, the
    # closing bridges the gap into one 4 x 9 block. Paper: the radius-2 disk closing
    # bridges it too, but the disk (5 px tall) fits nowhere in 4 rows, so opening empties it.
    mask = np.zeros((12, 16), bool)
    mask[4:8, 2:6] = True
    mask[4:8, 7:11] = True
    implementation = postprocess_mask(mask, morphology="implementation")
    np.testing.assert_array_equal(implementation, np.pad(np.ones((4, 9), bool), ((4, 4), (2, 5))))
    assert not postprocess_mask(mask).any()
