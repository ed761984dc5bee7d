"""The recipe's inputs: the synthetic defects that rank settings without test images, and the presets."""

from __future__ import annotations

import pytest
import torch

from ddad_hub.recipe import synthetic_defects


def _nominal(n: int = 6, size: int = 64) -> torch.Tensor:
    """A bright square part on a dark, slightly noisy background, in [-1, 1]."""
    g = torch.Generator().manual_seed(0)
    images = torch.full((n, 3, size, size), -0.8) + 0.01 * torch.randn(n, 3, size, size, generator=g)
    images[:, :, 16:48, 16:48] = 0.7
    return images


def test_masks_cover_exactly_what_changed_and_all_three_kinds_appear():
    nominal = _nominal()
    defective, masks = synthetic_defects(nominal, seed=3)
    changed = (defective - nominal).abs().amax(dim=1) > 1e-6
    assert not changed[~masks].any()  # nothing outside a mask was touched
    assert (changed & masks).sum() > 0.5 * masks.sum()  # and most of each mask really differs
    areas = masks.flatten(1).float().mean(1)
    # the third kind (every third image) erases a large region to the background colour: a missing part
    for i in range(2, len(nominal), 3):
        assert areas[i] >= 0.2**2 * 0.9
        region = defective[i][:, masks[i]]
        assert (region.mean(dim=1) - (-0.8)).abs().max() < 0.05 and region.std() < 0.05
    # the same seed gives the same defects; another seed, others
    again, _ = synthetic_defects(nominal, seed=3)
    other, _ = synthetic_defects(nominal, seed=4)
    assert torch.equal(again, defective) and not torch.equal(other, defective)


def test_a_grey_image_gets_a_grey_scratch_and_a_colour_image_a_coloured_one():
    grey = _nominal(3)[:, :1].expand(-1, 3, -1, -1).contiguous()  # all channels equal
    colour = grey.clone()
    colour[:, 0] += 0.05  # the same part, tinted
    for images, is_grey in ((grey, True), (colour, False)):
        defective, masks = synthetic_defects(images, seed=5)
        scratch = defective[1][:, masks[1]]  # the second kind, a bar of one colour
        spread = (scratch.amax(dim=0) - scratch.amin(dim=0)).max()
        assert (spread < 1e-6) if is_grey else (spread > 1e-3)
    # the grey rule draws the same random numbers: the defects' places and sizes do not move
    assert torch.equal(synthetic_defects(grey, seed=5)[1], synthetic_defects(colour, seed=5)[1])


def test_presets_refuse_counts_that_would_fail_deep_in_training(tmp_path):
    from ddad_hub.presets import load_preset

    for key, value in (("batch_size", 0), ("checkpoint_every", 0), ("max_minutes", 0), ("resolution", -8)):
        with pytest.raises(ValueError, match=f"{key} must"):
            load_preset("cpu", **{key: value})
    broken = tmp_path / "mine.json"
    broken.write_text('{"batch_size": 4,')
    with pytest.raises(ValueError, match="mine.json is not valid JSON"):
        load_preset(str(broken))
