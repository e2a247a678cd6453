"""Half precision done right: loss-scaled backward passes and CFG mixed in float32.

The tiny UNet runs in float16 on the CPU here (the project refuses half precision on CPU for
real work; these tests build the half model directly). Gradients must match float32's within 5 %.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffusion_handles.diffusion.backbone import Backbone
from diffusion_handles.diffusion.guidance import scaled_grad
from diffusion_handles.diffusion.hooks import capture_activations
from diffusion_handles.diffusion.random_models import build_backbone_components, tiny_configs
from diffusion_handles.diffusion.sampler import Denoiser


def _pair():
    full = Backbone(build_backbone_components(tiny_configs(), seed=0), model_id="tiny")
    half = Backbone(build_backbone_components(tiny_configs(), seed=0), model_id="tiny")
    half.unet.half()
    half.dtype = torch.float16  # bypasses the CPU check on purpose: CPU float16 is slow, not wrong
    return full, half


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30))


@pytest.fixture(scope="module")
def models():
    return _pair()


def _denoiser(bb, text):
    n = 4
    return Denoiser(bb, text, None, torch.zeros(1, 1, 8, 8), bb.schedule(n), 7.5)


def test_guidance_gradient_in_float16_matches_float32(models):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    grads = []
    for bb in models:
        den = _denoiser(bb, models[0].encode_prompt("a box"))
        with torch.no_grad(), capture_activations(bb.unet, (1,)) as cap:
            den.conditional(x.to(bb.dtype), 1)
        target = cap.outputs[1].float() + 0.05  # a nearby target: small energy, small gradients
        xr = x.clone().requires_grad_(True)
        with capture_activations(bb.unet, (1,)) as cap:
            den.conditional(xr.to(bb.dtype), 1)
            energy = (cap.outputs[1].float() - target).pow(2).mean()
            grads.append(scaled_grad(energy, xr, bb.dtype))
    full, half = grads
    assert float(full.abs().max()) < 1e-3  # small enough that an unscaled float16 pass underflows
    assert _rel(half, full) < 0.05
    assert float((half == 0).float().mean()) < 0.01


def test_null_text_gradient_in_float16_matches_float32(models):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=g)
    text = models[0].encode_prompt("a box")
    grads, unscaled = [], []
    for bb in models:
        den = _denoiser(bb, text)
        with torch.no_grad():
            out_c = den.conditional(x, 1)
            target = den.ddim(x, 1, out_c) + 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
        emb = text.float().clone().requires_grad_(True)
        loss = F.mse_loss(den.ddim(x, 1, den.cfg(den.conditional(x, 1, emb), out_c)), target)
        grads.append(scaled_grad(loss, emb, bb.dtype))
        loss = F.mse_loss(den.ddim(x, 1, den.cfg(den.conditional(x, 1, emb), out_c)), target)
        unscaled.append(torch.autograd.grad(loss, emb)[0])
    assert _rel(grads[1], grads[0]) < 0.05
    assert _rel(unscaled[1], unscaled[0]) > 0.05  # without loss scaling float16 is far off: the test can fail


def test_cfg_is_mixed_in_float32(models):
    den = _denoiser(models[1], models[0].encode_prompt("a box"))
    u = torch.tensor([1.0, 2.0], dtype=torch.float16)
    c = torch.tensor([1.0009765625, 2.001953125], dtype=torch.float16)  # one float16 ulp above u
    mixed = den.cfg(u, c)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, u.float() + 7.5 * (c.float() - u.float()))
