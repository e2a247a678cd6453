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
        assert r.caption() == s.caption()
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
    assert sc.relight(s, 3, 1).to_dict() == sc.relight(s, 3).to_dict()  # one sector: the whole range
