"""Perception models for real photos: depth, object selection, object removal (Sec. 5).

Thin wrappers around ``transformers`` / ``diffusers`` models with an offline path where one
makes sense. Models are loaded from a hub id or a local folder by :mod:`.hub`, which fails at
once with one clear line when weights are missing. Heavy libraries are imported lazily.
"""

from diffusion_handles.hub import is_offline, load_pretrained
from diffusion_handles.perception.depth import (
    DEFAULT_DEPTH_MODEL,
    DEPTH_KINDS,
    METRIC_DEPTH,
    RELATIVE_DEPTH,
    RELATIVE_DISPARITY,
    DepthConfig,
    DepthEstimate,
    DepthEstimator,
    align_scale_shift,
    to_z_depth,
)
from diffusion_handles.perception.inpaint import (
    DEFAULT_INPAINT_MODEL,
    InpaintConfig,
    background_depth,
    dilate_mask,
    remove_object,
)
from diffusion_handles.perception.prepare import PerceptionConfig, PreparedInputs, prepare_inputs
from diffusion_handles.perception.segment import (
    DEFAULT_DETECTOR_MODEL,
    DEFAULT_SAM_MODEL,
    Candidate,
    SamSegmenter,
    SegmentConfig,
    Selection,
    TextDetector,
    choose_candidate,
    overlay_image,
    parse_click,
    select_object,
)

__all__ = [
    "DEFAULT_DEPTH_MODEL", "DEFAULT_DETECTOR_MODEL", "DEFAULT_INPAINT_MODEL", "DEFAULT_SAM_MODEL",
    "DEPTH_KINDS", "METRIC_DEPTH", "RELATIVE_DEPTH", "RELATIVE_DISPARITY",
    "Candidate", "DepthConfig", "DepthEstimate", "DepthEstimator", "InpaintConfig", "PerceptionConfig",
    "PreparedInputs", "SamSegmenter", "SegmentConfig", "Selection", "TextDetector",
    "align_scale_shift", "background_depth", "choose_candidate", "dilate_mask",
    "is_offline", "load_pretrained", "overlay_image", "parse_click", "prepare_inputs", "remove_object",
    "select_object", "to_z_depth",
]
