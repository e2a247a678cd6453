"""Stage 3 of an edit: the effects region, where the object's shadow was and where it will fall.

A sun's shadow falls outside the region around the object that the paper's method regenerates,
so the composite would keep the old shadow and the moved object would cast none. This stage
finds both, for a photo with no ground truth, from the depth and the image alone
(:mod:`diffusion_handles.geometry.shadow`):

1. the light: the candidate sun direction whose cast shadow of the object best covers the dark
   pixels around it (:func:`~diffusion_handles.geometry.shadow.estimate_light`), kept only when
   no direction far from it explains them nearly as well; none found (light from behind the
   camera, a shadow hidden by the object, no visible shadow, dark texture): no effects, and the
   edit proceeds as before;
2. the old shadow: the object's shadow for that light on the scene without it (``d'_b``), minus
   where the moved object now covers it;
3. the new shadow: the moved object's points cast the same way on ``d'_b``, minus the moved
   object itself;
4. how much light a shadow leaves (per channel, measured on the old shadow), so the kept image can
   have the old shadow lifted and the new one cast (:func:`~diffusion_handles.geometry.shadow.move_shadow`);
   neither shadow's soft edge reaches the moved object;
5. a turned object's relighting: each of its pixels scaled for its turned normal under that sun
   and the sky the shadow's ratio implies (:mod:`~diffusion_handles.geometry.relight`), in the
   input's frame; the finish moves it with the object.

Later stages use it: the targets leave both shadows out of the background energy (Eq. 9 would
pull them back to the input) and transfer the shadow-moved input there with the identity
transfer; the finish keeps the shadow-moved (and relit) warped input wherever the warp has pixels.
A camera move has no effects (every pixel already moves with the scene).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from diffusion_handles.diffusion.config import GuidanceConfig
from diffusion_handles.geometry.shadow import MAX_RIVAL, Effects, find_shadows, soften
from diffusion_handles.stages.s1_prepare import Prepared
from diffusion_handles.stages.s2_geometry import Geometry, background_fill


def none_for(geo: Geometry) -> Effects:
    """No effects: empty shadows at ``geo``'s size."""
    return Effects.none(tuple(geo.hard.shape[-2:]))


def effects(prep: Prepared, geo: Geometry, guidance: GuidanceConfig) -> Geometry:
    """Stage 3: ``geo`` with its :class:`Effects` (``geo.effects``) and its region grown by both
    shadows; ``guidance.effects`` off, a camera move or no light found: empty effects, the
    region unchanged."""
    fx = find_effects(prep, geo, guidance)
    if not fx.any:
        return dataclasses.replace(geo, effects=fx)
    shadows = (fx.region > 0).float().to(geo.hard)
    hard = torch.maximum(geo.hard, shadows)
    soft = torch.maximum(geo.region, soften(F.max_pool2d(shadows, 3, 1, 1)).to(geo.region))
    return dataclasses.replace(geo, effects=fx, hard=hard, region=soft)


def find_effects(prep: Prepared, geo: Geometry, guidance: GuidanceConfig) -> Effects:
    """The :class:`Effects` of the edit (see the module docstring)."""
    kind = prep.request.kind
    if not guidance.effects or kind == "camera":
        return none_for(geo)
    inv = prep.inverted
    masks = [m.float().cpu() for m in prep.object_masks] if kind == "objects" else [inv.mask.float().cpu()]
    union = (torch.stack(masks).amax(0) > 0.5).float()
    receiver = background_fill(prep, union).float().cpu()
    transforms = None if geo.flow is None else list(geo.flow.transforms)
    return find_shadows(inv.image.float().cpu(), inv.depth.float().cpu(), masks, receiver, prep.camera, transforms,
                        geo.edited_mask.float().cpu(), MAX_RIVAL if guidance.light_check else 1.0)


__all__ = ["Effects", "effects", "find_effects", "none_for"]
