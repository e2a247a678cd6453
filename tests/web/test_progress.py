"""Render progress comes from the facade's step callbacks."""

from __future__ import annotations

from diffusion_handles.web.render import StepProgress


def test_step_progress_counts_every_pass_to_completion():
    seen = []
    prog = StepProgress(lambda stage, i, n, msg: seen.append((stage, i, n)), expected_total=3 * 4)
    for stage in ("ddim_inversion", "null_text", "guided_generation"):
        for i in range(4):
            prog({"stage": stage, "step": i, "total": 4})
    steps = [i for _, i, _ in seen]
    assert steps == list(range(1, 13))
    assert seen[-1] == ("guided generation", 12, 12)
    assert seen[4][0] == "null-text inversion"


def test_facade_reports_each_step_of_each_pass():
    import torch

    from diffusion_handles.diffusion.backbone import Backbone
    from diffusion_handles.diffusion.config import InversionConfig
    from diffusion_handles.diffusion.random_models import build_backbone_components, tiny_configs
    from diffusion_handles.geometry import HandleEdit
    from diffusion_handles.pipeline import DiffusionHandles

    torch.manual_seed(0)
    dh = DiffusionHandles(Backbone(build_backbone_components(tiny_configs(), seed=0), model_id="tiny"))
    image = torch.rand(1, 3, 16, 16)
    depth = torch.full((1, 1, 16, 16), 3.0)
    depth[..., 4:12, 4:12] = 2.0
    mask = (depth < 2.5).float()
    calls = []
    inv = dh.invert(image, "a box", depth, mask, inversion=InversionConfig(num_steps=3, null_inner_steps=1),
                    callback=lambda info: calls.append((info["stage"], info["step"], info["total"])))
    dh.edit(inv, HandleEdit(translate=(0.1, 0, 0)),
            callback=lambda info: calls.append(("edit", info["step"], info["total"])))
    assert calls == [(s, i, 3) for s in ("ddim_inversion", "null_text", "edit") for i in range(3)]
