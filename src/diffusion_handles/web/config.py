"""Settings of one web app instance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusion_handles.web.middleware import LOOPBACK_HOSTS
from diffusion_handles.web.uploads import UploadLimits


@dataclass(frozen=True)
class WebConfig:
    """Settings of one app instance.

    Attributes:
        model: diffusion model for renders (hub id, diffusers folder or ``tinyworld``).
        device, dtype: where renders run.
        limits: upload limits (10 MB per file, sides up to 4096 px).
        work_side: images are scaled down so the longer side is at most this (keeps the
            preview interactive and renders bounded).
        max_points: the 3D view's point cloud is sub-sampled to about this many points.
        max_waiting_jobs: renders allowed to wait in the queue (more get HTTP 429).
        max_waiting_previews: preview requests allowed in the preview queue (more get HTTP 429;
            previews run one at a time on one thread, so a burst cannot starve the machine).
        default_steps: DDIM steps of a render when the request gives none (None: the model's).
        results_dir: parent folder for job results (None: a fresh temporary folder).
        scene_size: ``(height, width)`` of the built-in and TinyWorld scenes.
        inversion_cache: inverted images kept in memory so a second render of the same image
            skips the inversion (each can take hundreds of MB for SD2-depth).
        perception_models: overrides of the perception models, keys ``sam_model``,
            ``detector_model``, ``depth_model`` (hub ids or local folders).
        allowed_hosts: the ``Host`` header values the app answers (anything else gets 400):
            ``name`` (any port) or ``name:port``; IPv6 addresses in brackets (``[::1]:7860``).
            The default, the loopback names on any port, suits an app on 127.0.0.1; ``handles
            serve`` passes the exact ``host:port`` it serves. Writes (POST, PUT, PATCH, DELETE)
            carrying an ``Origin`` header are answered only when that origin is the request's
            own host (the app's page), else 403.
    """

    model: str = "tinyworld"
    device: str = "cpu"
    dtype: str = "float32"
    limits: UploadLimits = UploadLimits()
    work_side: int = 512
    max_points: int = 60000
    max_waiting_jobs: int = 8
    max_waiting_previews: int = 64
    default_steps: int | None = None
    results_dir: Path | None = None
    scene_size: tuple[int, int] = (192, 256)
    inversion_cache: int = 2
    perception_models: tuple[tuple[str, str], ...] = ()
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
