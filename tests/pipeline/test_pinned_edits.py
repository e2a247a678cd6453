"""Pinned outputs of every edit kind, so a restructuring of the edit path cannot change them.

Five edits on the shipped TinyWorld model, fixed scenes and seeds, 6 DDIM steps (2 null-text
steps per timestep, 4 latent refinement steps after the encoder: the default code path, fewer
iterations) with the default guidance (null-text inversion, normalized guidance, identity transfer warped in pixels,
effects stage, detail-preserving finish, composite): one object moved and turned, two objects moved at once, a camera move, a removal and
a 3-frame trajectory. Their edited images, edited depths and soft regions were recorded once in
``tests/data/pinned_edits.npz`` (regenerate deliberately with
``python tests/pipeline/test_pinned_edits.py --write`` when a change is *meant* to alter them).

Which bugs this catches: any change of behaviour anywhere in the edit path: the geometry (flow,
z-buffer, edited depth), the guidance targets (a warped activation, a swapped mask, a dropped
energy term), the sampler, the identity transfer, the composite, the removal region or the
trajectory's interpolation, the effects stage (shadows found, lifted and cast) and the finish.
Recorded again on 2026-12-08 when a turned object began to be relit under the found light (only
``object`` changed; ``shadow.turn_gains`` giving ``None`` reproduced the previous reference exactly), and
before that when the shadows' soft edges began to stop at the moved object
(``Effects.outside`` returning the shadows unchanged reproduced the previous reference exactly), before that on
2026-12-07 when the finish began to leave what stands in front of the uncovered
ground out of its inpainting's sources (``s6_finish.in_front`` returning zeros reproduced the previous
reference exactly), before that when it began to count a moved object's unseen sides (its shell
moved and projected) as object when inpainting (``s6_finish.moved_shell`` returning ``None``
reproduced the previous reference exactly), before that when it began to inpaint the ground a moved object uncovers
from the background alone (the object's gaps and enclosed holes from the object) and the old shadow's lift was capped on the lit side of its edge, before
that when the finish began to keep the warp's pixel beside the moved silhouette (``s6_finish.BESIDE_PX = 0`` reproduced the previous reference exactly), and before that
when it began to refill the old silhouette's rim and blend the moved edge (``GuidanceConfig(silhouette_rims=False)`` reproduced the previous reference exactly)
and the light search gave each of several objects its own shell (only ``two_objects`` changed),
and before that when the effects stage and the detail-preserving finish became the
default (with ``GuidanceConfig(effects=False, keep_detail=False)`` the previous reference was
reproduced exactly before that).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).resolve().parents[1] / "data" / "pinned_edits.npz"
STEPS = 6
SCENE_SEED = 1000  # a held-out TinyWorld scene with two objects
# The edited images are stored in float16 (a rounding error of at most 2.4e-4 on [0, 1]); depths in
# float32. A sign error or a missing warp changes the images by 1e-2 to 1, far above these.
ATOL_IMAGE = 1e-3
ATOL_DEPTH = 1e-4


def _scene(seed: int, size: int):
    from diffusion_handles.world.render import render, scene_for_seed

    scene = scene_for_seed(seed, size, size)
    src = render(scene, seed=scene.seed)
    image = torch.from_numpy(src.rgb).permute(2, 0, 1)[None].float() / 255.0
    depth = torch.from_numpy(src.depth)[None, None]
    masks = [torch.from_numpy(m.astype(np.float32))[None, None] for m in src.masks]
    return scene, src, image, depth, masks


def compute_all(guidance=None) -> dict[str, np.ndarray]:
    """Run the five edits (``guidance``: a GuidanceConfig, default the library's); ``{name/field: array}``."""
    from diffusion_handles.animation import interpolate_keyframes
    from diffusion_handles.diffusion.config import InversionConfig
    from diffusion_handles.geometry.transform import HandleEdit
    from diffusion_handles.pipeline import CameraMove, DiffusionHandles, ObjectMove

    torch.manual_seed(0)
    dh = DiffusionHandles.from_pretrained("tinyworld").set_progress_bar_config(disable=True)
    size = dh.backbone.default_size
    inv_cfg = InversionConfig(num_steps=STEPS, null_inner_steps=2, encode_refine_steps=4)
    out: dict[str, np.ndarray] = {}

    def keep(name, res, *, depth=True):
        out[f"{name}/edited"] = res.edited[0].numpy().astype(np.float16)
        out[f"{name}/region"] = res.region[0, 0].numpy().astype(np.float16)
        out[f"{name}/preview"] = res.preview[0].numpy().astype(np.float16)
        if depth:
            out[f"{name}/edited_depth"] = res.edited_depth[0, 0].numpy().astype(np.float32)

    scene, src, image, depth, masks = _scene(SCENE_SEED, size)
    turn = HandleEdit(translate=(0.4, 0.0, 0.3), rotate_axis=(0.0, 1.0, 0.0), rotate_deg=30.0)
    inv = dh.invert(image, src.caption, depth, masks[0], inversion=inv_cfg)
    keep("object", dh.edit(inv, turn, guidance=guidance, fov_deg=scene.fov_deg, source_image=image))
    frames = interpolate_keyframes([HandleEdit(), HandleEdit(translate=(-0.5, 0.0, 0.2))], 3)
    for i, e in enumerate(frames):
        keep(f"trajectory{i}", dh.edit(inv, e, guidance=guidance, fov_deg=scene.fov_deg, source_image=image))
    keep("remove", dh.remove(inv, guidance=guidance, source_image=image))

    union = torch.clamp(masks[0] + masks[1], 0, 1)
    inv2 = dh.invert(image, src.caption, depth, union, inversion=inv_cfg)
    two = [HandleEdit(translate=(0.3, 0.0, 0.0)), HandleEdit(translate=(-0.3, 0.0, 0.2), scale=1.2)]
    keep("two_objects", dh.edit(inv2, [ObjectMove(m, t) for m, t in zip(masks[:2], two, strict=True)], guidance=guidance, fov_deg=scene.fov_deg,
                                source_image=image))

    whole = torch.ones_like(masks[0])
    inv3 = dh.invert(image, src.caption, depth, whole, inversion=inv_cfg)
    keep("camera", dh.edit(inv3, CameraMove(HandleEdit(translate=(0.2, 0.0, 0.1))), guidance=guidance, fov_deg=scene.fov_deg,
                           source_image=image))
    return out


@pytest.fixture(scope="module")
def computed() -> dict[str, np.ndarray]:
    return compute_all()


def test_reference_covers_every_edit_kind():
    ref = np.load(DATA, allow_pickle=False)
    kinds = {k.split("/")[0] for k in ref.files}
    assert kinds == {"object", "two_objects", "camera", "remove", "trajectory0", "trajectory1", "trajectory2"}


@pytest.mark.parametrize("kind", ["object", "two_objects", "camera", "remove", "trajectory0", "trajectory1",
                                  "trajectory2"])
def test_edit_output_is_pinned(computed, kind):
    ref = np.load(DATA, allow_pickle=False)
    fields = [k for k in ref.files if k.startswith(kind + "/")]
    assert fields
    for key in fields:
        got, want = computed[key].astype(np.float32), ref[key].astype(np.float32)
        assert got.shape == want.shape, key
        atol = ATOL_DEPTH * max(1.0, float(np.abs(want).max())) if key.endswith("depth") else ATOL_IMAGE
        err = float(np.abs(got - want).max())
        assert err <= atol, f"{key}: max |difference| {err:.2e} > {atol:.1e}"


def test_trajectory_frames_differ(computed):
    """The pins are not all one image: the trajectory's frames move the object."""
    a, c = computed["trajectory0/edited"].astype(np.float32), computed["trajectory2/edited"].astype(np.float32)
    assert float(np.abs(a - c).max()) > 0.1


if __name__ == "__main__" and "--write" in sys.argv:
    torch.set_num_threads(1)
    arrays = compute_all()
    DATA.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(DATA, **arrays)
    print(f"wrote {DATA} ({DATA.stat().st_size / 1e3:.0f} kB, {len(arrays)} arrays)")
