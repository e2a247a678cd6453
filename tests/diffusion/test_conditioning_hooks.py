"""Depth conditioning, activation hooks and the guidance schedule."""

from __future__ import annotations

import pytest
import torch

from diffusion_handles.diffusion.conditioning import depth_to_condition
from diffusion_handles.diffusion.config import GuidanceConfig
from diffusion_handles.diffusion.hooks import capture_activations


def test_depth_condition_is_normalised_inverse_depth():
    depth = torch.linspace(1.0, 4.0, 64).view(1, 1, 8, 8)
    cond = depth_to_condition(depth, (4, 4))
    assert cond.shape == (1, 1, 4, 4)
    assert cond.max().item() == pytest.approx(1.0) and cond.min().item() == pytest.approx(-1.0)
    # nearest surface (smallest z) is +1, farthest -1
    assert cond[0, 0, 0, 0] == cond.max() and cond[0, 0, -1, -1] == cond.min()
    # relative: a global scale of the depth does not change the condition
    torch.testing.assert_close(depth_to_condition(depth * 7.3, (4, 4)), cond)
    # constant depth: no relief
    assert depth_to_condition(torch.full((2, 1, 8, 8), 2.0), (4, 4)).abs().max() == 0


def _hook_counts(unet) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules())


def _inputs(backbone, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, backbone.tokenizer.model_max_length, 32, generator=g)
    dcond = torch.rand(1, 1, 8, 8, generator=g) * 2 - 1
    return x, text, dcond


def test_unet_eval_takes_one_timestep_per_sample(backbone):
    """A ``(B,)`` timestep tensor gives each sample its own ``t`` (the denoising-loss figure
    batches five noise levels): the same as one call per ``t``, and not the same as one ``t``."""
    x, text, dcond = _inputs(backbone)
    with torch.no_grad():
        both = backbone.unet_eval(x, torch.tensor([100, 700]), text, dcond)
        one = [backbone.unet_eval(x[i:i + 1], t, text[i:i + 1], dcond) for i, t in enumerate((100, 700))]
        same_t = backbone.unet_eval(x, 100, text, dcond)
    torch.testing.assert_close(both, torch.cat(one), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both[1], same_t[1], atol=1e-4)


def test_hooks_see_the_block_outputs_and_leave_the_model_unchanged(backbone):
    unet = backbone.unet
    x, text, dcond = _inputs(backbone)
    before_hooks = _hook_counts(unet)
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    with torch.no_grad():
        ref = backbone.unet_eval(x, 500, text, dcond)

    # independent witness: what flows *into* the next block / the output norm
    seen = {}
    h1 = unet.up_blocks[1].register_forward_pre_hook(lambda m, a, kw: seen.__setitem__(0, a[0] if a else kw["hidden_states"]), with_kwargs=True)
    h2 = unet.conv_norm_out.register_forward_pre_hook(lambda m, a: seen.__setitem__(1, a[0]))
    try:
        with torch.no_grad(), capture_activations(unet, [0, 1], detach=True, batch_slice=slice(1, 2)) as cap:
            out = backbone.unet_eval(x, 500, text, dcond)
    finally:
        h1.remove()
        h2.remove()
    assert cap.calls == {0: 1, 1: 1}
    torch.testing.assert_close(cap.outputs[0], seen[0][1:2], rtol=0, atol=0)
    torch.testing.assert_close(cap.outputs[1], seen[1][1:2], rtol=0, atol=0)
    assert cap.outputs[0].shape == (1, 32, 8, 8) and cap.outputs[1].shape == (1, 16, 8, 8)
    # the hooks changed nothing and are gone
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert _hook_counts(unet) == before_hooks
    assert all(torch.equal(state[k], v) for k, v in unet.state_dict().items())


def test_hooks_removed_on_error_and_graph_kept_for_guidance(backbone):
    unet = backbone.unet
    before = _hook_counts(unet)
    x, text, dcond = _inputs(backbone)
    with pytest.raises(RuntimeError, match="boom"), capture_activations(unet, [1]):
        raise RuntimeError("boom")
    assert _hook_counts(unet) == before
    xr = x[:1].clone().requires_grad_(True)
    with torch.enable_grad(), capture_activations(unet, [1]) as cap:
        backbone.unet_eval(xr, 300, text[:1], dcond)
        (g,) = torch.autograd.grad(cap.outputs[1].square().mean(), xr)
    assert g.abs().sum() > 0
    with pytest.raises(ValueError, match="up-block"):
        with capture_activations(unet, [5]):
            pass


def test_cyclic_schedule_default_is_the_papers():
    sched = GuidanceConfig().schedule(50, num_up_blocks=4)  # SD2-depth decoder: 4 up blocks
    assert sched[0] == (3,) and sched[1] == (2,) and sched[2] == (2, 3) and sched[3] == (3,)
    assert all(sched[i] for i in range(38)) and not any(sched[i] for i in range(38, 50))
    assert [len(s) for s in sched[:6]] == [1, 1, 2, 1, 1, 2]
    # scaled to a shorter schedule; explicit layers and guide_until
    assert sum(bool(s) for s in GuidanceConfig().schedule(10, 2)) == 8
    cfg = GuidanceConfig(layers=(0,), layer_cycle=((0,),), guide_until=3)
    assert cfg.schedule(5, 2) == [(0,), (0,), (0,), (), ()]
    assert GuidanceConfig(grad_steps=0).schedule(5, 2) == [()] * 5
    with pytest.raises(ValueError, match="layers"):
        GuidanceConfig(layers=(7,)).schedule(5, 4)
