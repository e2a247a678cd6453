"""The restyle's guidance and finish (GuidanceConfig.restyle_energy, restyle_finish): the object
term on appearance-normalized activations ignores a per-channel colour change and still sees the
layout; the finish puts the new look inside the moved object and nowhere else."""

from __future__ import annotations

import torch

from diffusion_handles.diffusion.energies import appearance_energy, guidance_energy, object_energy
from diffusion_handles.stages.s6_finish import restyle_inside


def _acts(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    psi = torch.randn(1, 8, 16, 16, generator=g)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 3:13] = 1.0
    return psi, mask, g


def test_a_per_channel_colour_change_costs_nothing_and_a_moved_layout_does():
    """Eq. 8 as written pulls a recoloured object back (large energy); the normalized term does
    not (a wrong or missing standardization fails the first assert), yet a shuffled layout
    inside the object still costs as much as under Eq. 8 in standardized units."""
    psi, mask, g = _acts()
    scale = torch.rand(1, 8, 1, 1, generator=g) * 2 + 0.5
    shift = torch.randn(1, 8, 1, 1, generator=g) * 3
    recoloured = psi * scale + shift
    assert float(object_energy(recoloured, psi, mask)) > 1.0
    assert float(appearance_energy(recoloured, psi, mask)) < 1e-4
    moved = torch.roll(psi, shifts=(0, 3), dims=(2, 3))
    assert float(appearance_energy(moved, psi, mask)) > 0.5


def test_only_the_masked_statistics_count():
    """Activations outside M'_o, however different, change nothing (statistics over the whole
    map instead of the mask fail)."""
    psi, mask, _ = _acts(1)
    other = psi.clone()
    other[..., mask[0, 0] < 0.5] = 50.0
    assert float(appearance_energy(other, psi, mask)) < 1e-6
    assert abs(float(appearance_energy(psi * 2.0, psi, mask, unit=3.0))) < 1e-4


def test_the_guidance_energy_takes_the_normalized_term_in_its_unit():
    psi, mask, _ = _acts(2)
    target = torch.roll(psi, shifts=(1, 0), dims=(2, 3))
    bg = 1.0 - mask
    g_app, _ = guidance_energy({0: psi}, {0: target}, ({0: mask}, {0: bg}), (0,), (1.0, 0.0), "appearance",
                               {0: 2.0}, {0: 5.0})
    assert torch.isclose(g_app, appearance_energy(psi, target, mask, 5.0) / 2.0)
    g_loc, _ = guidance_energy({0: psi}, {0: target}, ({0: mask}, {0: bg}), (0,), (1.0, 0.0), "local", {0: 2.0})
    assert torch.isclose(g_loc, object_energy(psi, target, mask) / 2.0)


def _finish_inputs():
    kept = torch.zeros(1, 3, 20, 20)
    kept[:, :, :, ::2] = 0.8  # the old look: a striped object (and background)
    generated = torch.full((1, 3, 20, 20), 0.3)
    generated[:, 0] = 0.9  # the new look: red
    moved = torch.zeros(1, 1, 20, 20)
    moved[..., 6:14, 6:14] = 1.0
    return kept, generated, moved


def test_generate_takes_the_new_look_inside_the_grown_object_only():
    kept, generated, moved = _finish_inputs()
    out = restyle_inside(kept, generated, moved, "generate", scale=2.0)
    grown = torch.zeros(1, 1, 20, 20, dtype=torch.bool)
    grown[..., 4:16, 4:16] = True  # one work pixel (2 input px) around the object
    assert torch.equal(out[grown.expand_as(out)], generated[grown.expand_as(out)])
    assert torch.equal(out[~grown.expand_as(out)], kept[~grown.expand_as(out)])
    assert torch.equal(restyle_inside(kept, generated, moved, "warp", scale=2.0), kept)


def test_detail_keeps_the_old_pattern_edges_in_the_new_colour():
    """Inside the object, "detail" has the generation's colour on average and the warp's
    stripes: the red channel's mean moves to the generation's, the stripes' contrast stays."""
    kept, generated, moved = _finish_inputs()
    out = restyle_inside(kept, generated, moved, "detail", scale=1.0)
    inner = out[..., 8:12, 8:12]
    assert abs(float(inner[:, 0].mean()) - 0.9) < 0.1  # the new colour (kept's red is 0.4 on average)
    stripes = float((inner[..., ::2] - inner[..., 1::2]).mean())  # even columns are kept's bright stripes
    assert stripes > 0.4
