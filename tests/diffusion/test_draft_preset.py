"""The draft preset (issue 35): at most a tenth of the default's UNet work per edit of an
inverted image and per new image (inversion included), counted by the backbone's own counter on
the tiny random model (a backward counts 2, ``progress.forward_equivalents``)."""

from __future__ import annotations

import pytest

from diffusion_handles.diffusion.config import PRESETS, GuidanceConfig, draft_steps, preset
from diffusion_handles.geometry import HandleEdit
from diffusion_handles.progress import forward_equivalents, plan_for

EDIT = HandleEdit(translate=(0.2, 0.0, 0.0), rotate_deg=15.0)


def _counted(handles, scene, name: str) -> tuple[int, int]:
    """UNet forward-equivalents ``(inversion, edit)`` of preset ``name``, counted."""
    inversion, guidance = preset(name)
    image, depth, mask = scene
    inv = handles.invert(image, "a box in front of a wall", depth, mask, inversion=inversion, guidance=guidance)
    out = handles.edit(inv, EDIT, guidance=guidance)
    return forward_equivalents(inv.unet_evals), forward_equivalents(out.unet_evals)


def test_draft_costs_at_most_a_tenth_of_the_default(handles, scene):
    inv_default, edit_default = _counted(handles, scene, "default")
    inv_draft, edit_draft = _counted(handles, scene, "draft")
    assert edit_default == 442  # 100 + 38 x 3 x 3 (docs/method.md)
    assert 10 * edit_draft <= edit_default  # an edit of an already inverted image
    assert 10 * (inv_draft + edit_draft) <= inv_default + edit_default  # a new image
    # the plan the progress estimates come from counts the same
    plan = plan_for(*preset("draft"))
    assert [s.key for s in plan] == ["ddim_inversion", "reconstruction", "guided_generation"]
    assert sum(s.steps * s.weight for s in plan[:2]) == inv_draft
    assert plan[2].steps * plan[2].weight == pytest.approx(edit_draft)


def test_draft_is_a_preset_with_the_default_preservation():
    assert "draft" in PRESETS
    inversion, guidance = preset("draft")
    default = GuidanceConfig()
    assert inversion.method == "negative-prompt" and inversion.num_steps == draft_steps(50) == 10
    assert inversion.encode_refine_steps == 0  # the encoder's latent as it is: no decoder passes per encode
    assert guidance.grad_steps == 1 and guidance.mode == "normalized"
    for name in ("identity_transfer", "transfer_source", "composite", "effects", "keep_detail"):
        assert getattr(guidance, name) == getattr(default, name), name  # none costs a UNet evaluation
    assert preset("draft", 4)[0].num_steps == 4
    assert [draft_steps(n) for n in (1, 3, 20, 50, 100)] == [1, 1, 4, 10, 20]
