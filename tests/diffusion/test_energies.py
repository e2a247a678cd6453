"""Guidance energies G_o (Eq. 8) and G_b (Eq. 9) on given tensors."""

from __future__ import annotations

import torch

from diffusion_handles.diffusion.energies import background_energy, guidance_energy, object_energy


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    psi = torch.randn(1, 6, 8, 8, generator=g)
    target = torch.randn(1, 6, 8, 8, generator=g)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, 3:7] = 1.0
    return psi, target, mask


def test_object_energy_is_local_l2_inside_the_mask():
    psi, target, mask = _data()
    assert object_energy(target, target, mask) == 0
    expected = ((psi - target) ** 2).mean(1, keepdim=True)[mask.bool()].mean()
    torch.testing.assert_close(object_energy(psi, target, mask), expected)
    # what lies outside M'_o does not matter
    changed = psi + (1 - mask) * 100.0
    torch.testing.assert_close(object_energy(changed, target, mask), object_energy(psi, target, mask))
    assert object_energy(psi, target, torch.zeros_like(mask)) == 0


def test_background_energy_compares_masked_means():
    psi, target, mask = _data()
    bg = 1 - mask
    # any rearrangement of the background that keeps its mean costs nothing (lighting may move)
    idx = bg.flatten().nonzero().flatten()
    shuffled = target.clone().flatten(2)
    shuffled[..., idx] = target.flatten(2)[..., idx[torch.randperm(len(idx))]]
    shuffled = shuffled.view_as(target)
    rolled = torch.where(bg.bool(), target, psi)  # differs from target only inside the object
    assert background_energy(shuffled, target, bg) < 1e-10
    assert background_energy(rolled, target, bg) < 1e-10
    shift = target + bg * 0.5
    torch.testing.assert_close(background_energy(shift, target, bg), torch.tensor(0.25))


def test_guidance_energy_weights_and_gradient_direction():
    psi, target, mask = _data()
    x = psi.clone().requires_grad_(True)
    acts = {3: x}
    g, parts = guidance_energy(acts, {3: target}, ({3: mask}, {3: 1 - mask}), (3,), (45.0, 37.5))
    torch.testing.assert_close(g, 45.0 * object_energy(psi, target, mask) + 37.5 * background_energy(psi, target, 1 - mask))
    assert set(parts) == {"G_o[3]", "G_b[3]", "G"}
    (grad,) = torch.autograd.grad(g, x)
    stepped = psi - 1e-3 * grad
    g2, _ = guidance_energy({3: stepped}, {3: target}, ({3: mask}, {3: 1 - mask}), (3,), (45.0, 37.5))
    assert g2 < g
