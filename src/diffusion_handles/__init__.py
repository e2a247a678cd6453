"""diffusion-handles: 3D object edits on images with a depth-conditioned diffusion model.

Implements "Diffusion Handles: Enabling 3D Edits for Diffusion Models by Lifting Activations
to 3D" (Pandey et al., CVPR 2024). Layers, lowest first: ``geometry`` (pure torch, Sec. 5.1),
``diffusion`` (backbone, inversion, guidance, Sec. 4-5.2) beside ``perception`` (depth, masks,
object removal), ``stages`` (the five stages of one edit), ``pipeline`` (the facade), ``world``
(offline miniature world), ``bench``, then ``batch`` and ``web``, and ``cli`` on top. Lower layers
never import higher ones (``docs/architecture.md``; ``tests/architecture`` checks it).
"""

from diffusion_handles.errors import HandlesError

__version__ = "0.1.0"
__all__ = ["HandlesError", "__version__"]
