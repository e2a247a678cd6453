"""One edit, six stages, shared by every edit kind (one object, several objects, a camera move,
a removal, each frame of a trajectory). :class:`~diffusion_handles.pipeline.DiffusionHandles`
composes them; a new stage or edit kind is added here, in one place.

1. :func:`prepare` (``s1_prepare.py``): the caller's request and the inversion in the model's working
   frame (work size, device, camera), checked: :class:`Prepared`.
2. :func:`geometry` (``s2_geometry.py``): the 3D edit (Sec. 5.1): flow, edited depth ``d'``, the
   region that is regenerated, the instant preview: :class:`Geometry`.
3. :func:`effects` (``s3_effects.py``): the object's old shadow and the moved object's new one,
   from a light direction estimated from the image and shadows cast from the depth; the region
   grows by both (:class:`Geometry` with ``effects``). Not in the paper.
4. :func:`targets` (``s4_targets.py``): what the guided generation follows (Eq. 6 targets, the masks
   of Eqs. 8-9, the latent preservation) and the latent it starts from: :class:`Targets`.
5. :func:`sample` (``s5_sample.py``): the guided generation (Eq. 3) conditioned on ``d'``:
   :class:`Sampled`.
6. :func:`finish` (``s6_finish.py``): decode, back to the input's frame, keep the warped input
   where it has pixels, composite: :class:`EditOutput`.
"""

from diffusion_handles.stages.s1_prepare import (
    CameraMove,
    EditRequest,
    ObjectMove,
    Prepared,
    edit_target,
    prepare,
    request_for_edit,
    request_for_removal,
)
from diffusion_handles.stages.s2_geometry import Geometry, geometry
from diffusion_handles.stages.s3_effects import effects, find_effects
from diffusion_handles.stages.s4_targets import Targets, guidance_targets, pixel_transfer, targets
from diffusion_handles.stages.s5_sample import Sampled, sample
from diffusion_handles.stages.s6_finish import EditOutput, finish

__all__ = [
    "CameraMove", "EditOutput", "EditRequest", "Geometry", "ObjectMove", "Prepared", "Sampled", "Targets",
    "edit_target", "effects", "find_effects", "finish", "geometry", "guidance_targets", "pixel_transfer", "prepare", "request_for_edit",
    "request_for_removal", "sample", "targets",
]
