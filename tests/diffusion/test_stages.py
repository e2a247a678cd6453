"""Every edit kind runs the same five stages, once each, in order (``diffusion_handles.stages``).

Which bugs this catches: an edit kind that bypasses a stage (its own decode, its own sampler
call), a stage run twice, stages run out of order, a kind whose request is built wrong (a camera
move taken for an object edit), and per-stage timings that stop covering every stage.
"""

from __future__ import annotations

import pytest
import torch

import diffusion_handles.pipeline as pipeline
from diffusion_handles.diffusion.config import InversionConfig
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import HandleEdit
from diffusion_handles.pipeline import CameraMove, ObjectMove, edit_target

STAGES = ("prepare", "geometry", "effects", "targets", "sample", "finish")
INV = InversionConfig(num_steps=3, method="negative-prompt")


@pytest.fixture(scope="module")
def inverted(handles, scene):
    image, depth, mask = scene
    return handles.invert(image, "a box in front of a wall", depth, mask, inversion=INV)


@pytest.fixture()
def spied(monkeypatch):
    """Record each stage call as (stage, edit kind)."""
    calls: list[tuple[str, str]] = []
    for name in STAGES:
        real = getattr(pipeline, name)

        def spy(*args, _real=real, _name=name, **kw):
            out = _real(*args, **kw)
            kind = out.request.kind if _name == "prepare" else calls[-1][1]
            calls.append((_name, kind))
            return out

        monkeypatch.setattr(pipeline, name, spy)
    return calls


def _edits(handles, inverted, scene):
    _, _, mask = scene
    cols = torch.nonzero(mask[0, 0] > 0.5)[:, 1]
    split = int(cols.float().median()) + 1  # the object's left and right halves, both non-empty
    left, right = mask.clone(), mask.clone()
    left[..., :, split:] = 0
    right[..., :, :split] = 0
    move = HandleEdit(translate=(0.1, 0.0, 0.0))
    return {
        "object": lambda: handles.edit(inverted, move),
        "camera": lambda: handles.edit(inverted, CameraMove(move)),
        "objects": lambda: handles.edit(inverted, [ObjectMove(left, move), ObjectMove(right, HandleEdit())]),
        "remove": lambda: handles.remove(inverted),
    }


@pytest.mark.parametrize("kind", ["object", "camera", "objects", "remove"])
def test_every_kind_runs_the_stages_once_in_order(handles, inverted, scene, spied, kind):
    out = _edits(handles, inverted, scene)[kind]()
    assert spied == [(stage, kind) for stage in STAGES]
    assert tuple(out.timings) == STAGES and all(t >= 0 for t in out.timings.values())
    assert out.edited.shape == scene[0].shape and bool(torch.isfinite(out.edited).all())


def test_edit_target_pairs_masks_with_transforms_and_refuses_mismatches(scene):
    _, _, mask = scene
    a, b = HandleEdit(translate=(0.1, 0, 0)), HandleEdit(translate=(-0.1, 0, 0))
    assert edit_target(a) is a
    assert edit_target(a, camera=True) == CameraMove(a)
    pairs = edit_target([a, b], object_masks=[mask, 1 - mask])
    assert [p.transform for p in pairs] == [a, b] and torch.equal(pairs[1].mask, 1 - mask)
    with pytest.raises(HandlesError, match="one transform per mask"):
        edit_target([a], object_masks=[mask, mask])
    with pytest.raises(HandlesError, match="camera"):
        edit_target(a, camera=True, object_masks=[mask])
