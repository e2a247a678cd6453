"""Diffusion layer (Sec. 4-5.2): backbone, depth conditioning, activation capture, inversion,
guidance energies and the guided sampler. Imports geometry only; never pipeline/world/cli."""

from diffusion_handles.diffusion.backbone import DEFAULT_MODEL, Backbone, EvalCounter
from diffusion_handles.diffusion.conditioning import depth_to_condition
from diffusion_handles.diffusion.config import INVERSION_METHODS, GuidanceConfig, InversionConfig
from diffusion_handles.diffusion.energies import background_energy, guidance_energy, object_energy
from diffusion_handles.diffusion.guidance import GuidePlan, guided_update, scaled_grad
from diffusion_handles.diffusion.hooks import ActivationCapture, capture_activations
from diffusion_handles.diffusion.inversion import InversionResult, invert
from diffusion_handles.diffusion.inverted import InvertedImage, inversion_key
from diffusion_handles.diffusion.sampler import Denoiser, SampleResult, sample

__all__ = [
    "DEFAULT_MODEL", "INVERSION_METHODS", "ActivationCapture", "Backbone", "Denoiser", "EvalCounter",
    "GuidanceConfig", "GuidePlan", "InversionConfig", "InversionResult", "InvertedImage",
    "SampleResult", "background_energy", "capture_activations", "depth_to_condition",
    "guidance_energy", "guided_update", "invert", "inversion_key", "object_energy", "sample", "scaled_grad",
]
