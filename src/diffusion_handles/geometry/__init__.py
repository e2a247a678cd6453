"""Pure, vectorised torch geometry of the 3D edit (Sec. 5.1). No model imports.

Conventions (see :mod:`.camera`): pinhole at the origin, OpenCV axes (x right, y down,
z forward), 55 degree horizontal field of view by default, z-depth in scene units, normalised
image coordinates in ``[0, 1]^2`` with pixel centres at ``(j + 0.5) / W``.
"""

from diffusion_handles.geometry.camera import (
    DEFAULT_FOV_DEG,
    Camera,
    lift,
    lift_at,
    project,
    ray_distance_to_z,
    z_to_ray_distance,
)
from diffusion_handles.geometry.edit import (
    EditGeometry,
    FeatureEdit,
    camera_move_depth,
    compute_camera_move,
    compute_edit,
    edited_depth,
    mask_pivot,
    object_centroid,
    render_preview,
)
from diffusion_handles.geometry.multi import MultiEditGeometry, compute_multi_edit, disjoint_masks
from diffusion_handles.geometry.poisson import (
    background_depth_fill,
    fill_depth,
    poisson_composite,
    poisson_solve,
)
from diffusion_handles.geometry.region import (
    edit_region,
    hole_region,
    latent_region,
    removal_region,
)
from diffusion_handles.geometry.splat import close_zbuffer, zbuffer_splat
from diffusion_handles.geometry.transform import (
    HandleEdit,
    Similarity,
    camera_move,
    rotation_matrix,
)
from diffusion_handles.geometry.warp import warp, warp_masked

__all__ = [
    "edit_region", "hole_region", "latent_region", "removal_region",
    "MultiEditGeometry", "compute_multi_edit", "disjoint_masks",
    "DEFAULT_FOV_DEG",
    "Camera",
    "EditGeometry",
    "FeatureEdit",
    "HandleEdit",
    "Similarity",
    "background_depth_fill",
    "camera_move",
    "camera_move_depth",
    "close_zbuffer",
    "compute_camera_move",
    "compute_edit",
    "edited_depth",
    "fill_depth",
    "lift",
    "lift_at",
    "mask_pivot",
    "object_centroid",
    "poisson_composite",
    "poisson_solve",
    "project",
    "ray_distance_to_z",
    "render_preview",
    "rotation_matrix",
    "warp",
    "warp_masked",
    "z_to_ray_distance",
    "zbuffer_splat",
]
