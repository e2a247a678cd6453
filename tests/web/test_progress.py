"""Render progress comes from the facade's step callbacks."""

from __future__ import annotations

from diffusion_handles.web.render import step_progress


def test_step_progress_names_each_stage_with_its_own_steps():
    from diffusion_handles.progress import Stage

    seen = []

    def report(stage, step, steps, message="", *, done, total, eta_s):
        seen.append((stage, step, steps, done, total, eta_s, message))

    plan = [Stage(k, 4) for k in ("ddim_inversion", "null_text", "guided_generation")]
    prog = step_progress(report, plan)
    for stage in ("ddim_inversion", "null_text", "guided_generation"):
        for i in range(4):
            prog({"stage": stage, "step": i, "total": 4})
    assert [done for _, _, _, done, *_ in seen] == list(range(1, 13))  # all stages together: the fraction
    assert [(st, i, n) for st, i, n, *_ in seen[3:6]] == [("inversion", 4, 4), ("null-text", 1, 4), ("null-text", 2, 4)]
    assert seen[-1][:5] == ("guided generation", 4, 4, 12, 12)
    assert all(eta is not None and eta >= 0 for *_, eta, _ in seen)
    assert seen[4][6].startswith("null-text 1/4, ") and "elapsed" in seen[4][6]


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
