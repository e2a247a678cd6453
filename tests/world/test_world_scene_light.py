"""A scene's light: drawn once by ``sample_scene``, redrawn by ``relight`` for the ``relit`` reference."""

from __future__ import annotations

import math

import pytest

from diffusion_handles.world import scene as sc


def test_sampled_light_is_the_stream_the_training_sets_were_rendered_from():
    """Seed 3's light, as rendered into every training set so far: moving a draw of the
    sampler (e.g. while sharing code with relight) would silently change every scene."""
    s = sc.sample_scene(3)
    assert s.sun_direction == pytest.approx([-0.6660958172950852, -0.6345961364164594, -0.39192359692584844], abs=1e-12)
    assert s.sun_irradiance == pytest.approx(2.475374376948077, abs=1e-12)
    assert s.ambient == pytest.approx([0.32890472801045734, 0.34031024508303725, 0.3180466828394558], abs=1e-12)


def test_relight_redraws_only_the_light_within_the_worlds_range():
    s = sc.sample_scene(5)
    before = s.to_dict()
    lights = [sc.relight(s, k) for k in range(40)]
    assert s.to_dict() == before  # the input is not changed
    assert sc.relight(s, 7).to_dict() == lights[7].to_dict()  # seeded
    keys = {"sun_direction", "sun_irradiance", "ambient"}
    for r in lights:
        d = r.to_dict()
        assert {k: v for k, v in d.items() if k not in keys} == {k: v for k, v in before.items() if k not in keys}
        x, y, z = r.sun_direction
        assert math.isclose(x * x + y * y + z * z, 1.0, rel_tol=1e-9)
        assert sc.SUN_ELEVATION_DEG[0] - 1e-9 <= math.degrees(math.asin(-y)) <= sc.SUN_ELEVATION_DEG[1] + 1e-9
        assert sc.SUN_IRRADIANCE[0] <= r.sun_irradiance <= sc.SUN_IRRADIANCE[1]
        lo, hi = sc.AMBIENT[0] * (1 - sc.AMBIENT_TINT), sc.AMBIENT[1] * (1 + sc.AMBIENT_TINT)
        assert all(lo <= a <= hi for a in r.ambient)
    # the sun goes round: both the lit wall (azimuth near 0, travelling to -z) and its back (+z) occur
    assert min(r.sun_direction[2] for r in lights) < -0.3 and max(r.sun_direction[2] for r in lights) > 0.3


@pytest.mark.parametrize("sectors", [2, 3, 6])
def test_relight_within_a_sector_keeps_the_sun_on_its_side(sectors):
    """``azimuth_sectors``: the new sun stays in the old sun's sector (what a caption naming the
    sector would fix), and ``sun_azimuth_deg`` inverts the sampler's direction."""
    lo, hi = sc.SUN_AZIMUTH_DEG
    width = (hi - lo) / sectors
    for seed in range(12):
        s = sc.sample_scene(seed)
        k = int((sc.sun_azimuth_deg(s.sun_direction) - lo) // width)
        new = [sc.sun_azimuth_deg(sc.relight(s, j, sectors).sun_direction) for j in range(8)]
        assert all(lo + k * width - 1e-9 <= a <= lo + (k + 1) * width + 1e-9 for a in new)
        assert len({round(a, 6) for a in new}) == 8  # drawn, not copied
        if sectors == len(sc.LIGHT_SIDES):  # the caption's sectors: the caption stays true
            assert all(sc.relight(s, j, sectors).caption() == s.caption() for j in range(8))
    assert sc.relight(s, 3, 1).to_dict() == sc.relight(s, 3).to_dict()  # one sector: the whole range


def _sun(azimuth_deg: float, elevation_deg: float = 45.0) -> list[float]:
    return sc.sun_direction(azimuth_deg, elevation_deg)


def test_caption_names_the_suns_side_and_the_mirror_swaps_it():
    """The caption ends with the sun's side (six 50-degree sectors of the sampler's azimuth range,
    from the camera); the mirrored image's caption names the other side. Pins the words, their
    order round the scene and the sign of the azimuth."""
    s = sc.sample_scene(5)
    for az, side in [(-140, "back left"), (-75, "left"), (-10, "front left"), (10, "front right"),
                     (75, "right"), (140, "back right")]:
        s.sun_direction = _sun(az)
        assert s.sun_azimuth_camera_deg() == pytest.approx(az, abs=1e-9)
        assert s.caption().endswith(f" wall lit from the {side}")
        mirror = side.replace("left", "?").replace("right", "left").replace("?", "right")
        assert s.caption(mirrored=True).endswith(f" wall lit from the {mirror}")
    for seed in range(30):  # the sampler's scenes: the caption's azimuth is the drawn one
        t = sc.sample_scene(seed)
        assert t.sun_azimuth_camera_deg() == pytest.approx(sc.sun_azimuth_deg(t.sun_direction), abs=1e-9)
        assert t.light_sector() == sc.azimuth_sector(sc.sun_azimuth_deg(t.sun_direction), len(sc.LIGHT_SIDES))
    assert set(sc.LIGHT_WORDS) == {"lit", "from", "the", "back", "front", "left", "right"}
    assert set(sc.LIGHT_WORDS) <= set(sc.CAPTION_WORDS)


def test_caption_side_follows_the_camera():
    """Turning the camera about the vertical axis turns the named side with it: a sun shining
    from behind the camera at the back wall comes from the camera's left once the camera has
    turned a quarter round to look along -x; ``relight`` keeps the sun on that named side."""
    s = sc.sample_scene(5)
    s.sun_direction = _sun(-20.0)  # travels towards the back wall, from behind the camera's left shoulder
    assert s.caption().endswith("lit from the front left")
    c2w = s.c2w()
    c2w[:3, :3] = sc._yaw(90.0) @ c2w[:3, :3]  # now looks along -x; its right is -z
    s.camera_to_world = c2w.tolist()
    assert s.sun_azimuth_camera_deg() == pytest.approx(-110.0, abs=1e-6)
    assert s.caption().endswith("lit from the back left")
    assert all(sc.relight(s, j, len(sc.LIGHT_SIDES)).caption() == s.caption() for j in range(12))


@pytest.mark.parametrize("az", [-75.0, 75.0])
def test_the_named_side_is_the_lit_side_of_the_render(az):
    """Rendered: the half of a lone object on the side the caption names is the brighter one."""
    pytest.importorskip("mitsuba")
    import numpy as np

    from diffusion_handles.world.render import render

    s = sc.sample_scene(11, 64, 64, n_objects=1)
    s.sun_direction = _sun(az, 35.0)
    r = render(s, spp=16, seed=0)
    m = r.masks[0]
    ys, xs = np.nonzero(m)
    mid = np.median(xs)
    luma = r.rgb.astype(np.float32).mean(-1)
    left, right = luma[ys[xs < mid], xs[xs < mid]].mean(), luma[ys[xs > mid], xs[xs > mid]].mean()
    named = s.caption().rsplit(" ", 1)[-1]
    assert named == ("left" if az < 0 else "right")
    assert (left > right + 10) if named == "left" else (right > left + 10)


def test_training_captions_are_written_from_the_scene_records():
    """A training set rendered before the light joined the caption trains (and fits its leak
    prior) on the captions the world writes now: from the stored scenes, not the stored strings."""
    import numpy as np

    from diffusion_handles.world.dataset import captions_of

    scenes = [sc.sample_scene(s) for s in (3, 4)]
    stale = np.array(["a red cube on a grey floor by a white wall"] * 2)
    data = {"caption": stale, "caption_mirrored": stale, "scene": np.array([s.to_json() for s in scenes])}
    caps, mirrored = captions_of(data)
    assert caps == [s.caption() for s in scenes] and mirrored == [s.caption(mirrored=True) for s in scenes]
    assert all(" lit from the " in c for c in caps)
    del data["scene"]  # no scene records: the stored captions
    assert captions_of(data) == (list(stale), list(stale))
