"""A prior over the signal leak: where generation's starting latent gets its brightness.

Stable Diffusion's schedule never reaches pure noise: at the first of 25 DDIM steps (t = 961)
``x_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps`` keeps ``sqrt(a_t) = 0.085`` of the image latent,
more than enough of its low frequencies (the mean colour of wall and floor) for the UNet to read
them off instead of deriving them from the caption. Sampling from pure noise then leaves the
brightness to the noise (``benchmarks/signal_leak.py`` measures it on TinyWorld). Everaert et
al. ("Exploiting the Signal-Leak Bias in Diffusion Models", WACV 2024) keep the model and give
the starting latent the leak the model expects, drawn from a distribution fitted to the training
latents. This module makes that distribution's mean conditional on the generation's own inputs:

    mu(caption, depth) = [text(caption), pool(1 / depth), 1, side(caption)] @ W   (k x k block means of z_0)
    x_T = sqrt(a_T) up(mu) + sqrt(1 - a_T) eps                            (q(x_T | z_0 = up(mu)))

with ``text`` the model's own text encoder averaged over tokens, ``pool`` an average of the
inverse depth over a ``depth_pool x depth_pool`` grid, ``side`` the one-hot of the sun's side the
caption names ("... lit from the left"; six sides, :data:`~diffusion_handles.world.scene.LIGHT_SIDES`;
all zero when it names none), ``up`` nearest-neighbour upsampling to the
latent grid, and ``W`` a ridge regression (closed form) on the training set's latents. The UNet
is unchanged, and so is every edit: edits start from the inverted ``x_T``, which carries the
input's own leak. Only generation from a caption and a depth map uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusion_handles.errors import HandlesError
from diffusion_handles.world.model import PRIOR_FILE, cumulative_hours

BLOCKS = 4  # k: the prior predicts a k x k grid of block means per latent channel
DEPTH_POOL = 8  # the inverse depth enters as its averages over a DEPTH_POOL x DEPTH_POOL grid
RIDGE = 1.0  # ridge penalty of the fit


@dataclass
class LeakPrior:
    """``weight (D + depth_pool**2 + 1 + light_sides, C * blocks**2)``: features to block means of
    the scaled latent. ``light_sides``: 0 for a prior without the light's side (fitted before the
    captions named it), else ``len(LIGHT_SIDES)``."""

    weight: torch.Tensor
    blocks: int = BLOCKS
    depth_pool: int = DEPTH_POOL
    light_sides: int = 0

    def predict(self, backbone, caption: str, depth: torch.Tensor) -> torch.Tensor:
        """Block means ``(1, C, blocks, blocks)`` of ``z_0`` for a caption and z-depth ``(1, 1, H, W)``."""
        x = features(backbone, [caption], depth, self.depth_pool, light=self.light_sides > 0)
        c = int(backbone.vae.config.latent_channels)
        return (x @ self.weight.double()).float().reshape(1, c, self.blocks, self.blocks)

    def start(self, backbone, caption: str, depth: torch.Tensor, noise: torch.Tensor, alpha: float) -> torch.Tensor:
        """``x_T = sqrt(a_T) up(mu) + sqrt(1 - a_T) noise`` for ``noise (1, C, h, w)`` and ``alpha = a_T``."""
        mu = F.interpolate(self.predict(backbone, caption, depth), size=tuple(noise.shape[-2:]), mode="nearest")
        return alpha ** 0.5 * mu.to(noise) + (1.0 - alpha) ** 0.5 * noise

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(folder) / PRIOR_FILE
        save_file({"weight": self.weight.float().contiguous()}, str(path),
                  metadata={"blocks": str(self.blocks), "depth_pool": str(self.depth_pool),
                            "light_sides": str(self.light_sides)})
        return path


def features(backbone, captions: list[str], depth: torch.Tensor, depth_pool: int = DEPTH_POOL,
             light: bool = True) -> torch.Tensor:
    """``(N, D + depth_pool**2 + 1 [+ S])`` float64: token-averaged text encoding, pooled inverse
    depth, 1 and, with ``light``, the one-hot of the sun's side each caption names (``S =
    len(LIGHT_SIDES)``; zeros when it names none).

    ``depth (N, 1, H, W)``: z-depth in scene units (positive). The side enters as its own
    features because the model's token-averaged encoding dilutes it; with them the shipped prior
    explains 72.3 % of the block means' variance on held-out training images, against 50.7 % for
    model version 2.7's prior without them (``handles world leak-prior --holdout 0.1``, the
    figure each fit prints and records in ``training.json``).
    """
    from diffusion_handles.world.scene import LIGHT_SIDES, light_side_of

    with torch.no_grad():
        text = torch.cat([backbone.encode_prompt(c).float().mean(1).cpu() for c in captions])  # (N, D)
    inv = F.adaptive_avg_pool2d(1.0 / depth.double().clamp_min(1e-6), depth_pool).flatten(1)  # (N, P*P)
    parts = [text.double(), inv, torch.ones(len(captions), 1, dtype=torch.double)]
    if light:
        side = torch.zeros(len(captions), len(LIGHT_SIDES), dtype=torch.double)
        for i, c in enumerate(captions):
            k = light_side_of(c)
            if k is not None:
                side[i, k] = 1.0
        parts.append(side)
    return torch.cat(parts, 1)


def _block_means(latents: torch.Tensor, blocks: int) -> torch.Tensor:
    """``(N, C * blocks**2)`` float64: the square ``blocks x blocks`` block means of ``latents (N, C, h, w)``."""
    if latents.shape[-1] % blocks or latents.shape[-2] % blocks:
        raise ValueError(f"blocks: expected a divisor of the latent grid {tuple(latents.shape[-2:])}, got {blocks}")
    return F.avg_pool2d(latents.double(), latents.shape[-1] // blocks).flatten(1)


def _solve(x: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    """Ridge regression ``argmin_W |x W - y|^2 + ridge |W|^2`` (closed form)."""
    return torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)


def fit(backbone, captions: list[str], depth: torch.Tensor, latents: torch.Tensor, blocks: int = BLOCKS,
        depth_pool: int = DEPTH_POOL, ridge: float = RIDGE, holdout: float = 0.0) -> tuple[LeakPrior, float | None]:
    """Ridge regression from :func:`features` to the ``blocks x blocks`` block means of ``latents``.

    ``latents (N, C, h, w)``: the scaled latents ``z_0`` of the ``N`` training images (``h`` and
    ``w`` multiples of ``blocks``); ``depth (N, 1, H, W)`` their z-depth; ``captions`` theirs.
    Returns the prior fitted on all ``N`` and, with ``0 < holdout < 1``, the share of the block
    means' variance a fit on the first ``1 - holdout`` of the images explains on the rest (the
    mean over the ``C * blocks**2`` outputs of ``1 - SSE / SST``; ``None`` without a holdout).
    """
    n = len(captions)
    if latents.shape[0] != n or depth.shape[0] != n:
        raise ValueError(f"latents, depth: expected {n} of each (one per caption), got {latents.shape[0]} and {depth.shape[0]}")
    from diffusion_handles.world.scene import LIGHT_SIDES

    x, y = features(backbone, captions, depth, depth_pool), _block_means(latents, blocks)  # (N, F), (N, C*k*k)
    r2 = None
    m = int(round(n * (1.0 - holdout)))
    if 0.0 < holdout < 1.0 and 2 <= m < n:
        pred = x[m:] @ _solve(x[:m], y[:m], ridge)
        r2 = float((1.0 - (pred - y[m:]).pow(2).sum(0) / (y[m:] - y[:m].mean(0)).pow(2).sum(0)).mean())
    return LeakPrior(_solve(x, y, ridge).float(), blocks, depth_pool, len(LIGHT_SIDES)), r2


def load(folder: str | Path, backbone) -> LeakPrior | None:
    """The model folder's prior, checked against ``backbone``; ``None`` when it has none."""
    path = Path(folder) / PRIOR_FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            weight = f.get_tensor("weight")
        blocks, pool, sides = int(meta["blocks"]), int(meta["depth_pool"]), int(meta.get("light_sides", 0))
    except Exception as e:  # safetensors raises several types for a damaged file
        raise HandlesError(f"--model: {path} is not a readable leak prior ({type(e).__name__}: {str(e)[:80]})") from None
    from diffusion_handles.world.scene import LIGHT_SIDES

    if sides not in (0, len(LIGHT_SIDES)):
        raise HandlesError(f"--model: {path}: expected 0 or {len(LIGHT_SIDES)} light sides, got {sides}")
    c = int(backbone.vae.config.latent_channels)
    d = int(backbone.text_encoder.config.hidden_size)
    want = (d + pool * pool + 1 + sides, c * blocks * blocks)
    if tuple(weight.shape) != want:
        raise HandlesError(f"--model: {path}: expected a weight of shape {want} for this model "
                           f"(text width {d}, {c} latent channels, {blocks}x{blocks} blocks, {sides} light sides), "
                           f"got {tuple(weight.shape)}")
    return LeakPrior(weight, blocks, pool, sides)


def fit_dataset(backbone, data: dict, n: int | None = None, blocks: int = BLOCKS, batch: int = 32,
                holdout: float = 0.0) -> tuple[LeakPrior, float | None]:
    """:func:`fit` on the first ``n`` images of a training set (:func:`~diffusion_handles.world.dataset.load_dataset`),
    encoded as the UNet trained on them (the encoder's latent, no refinement)."""
    from diffusion_handles.world.dataset import captions_of

    n = len(data["rgb"]) if n is None else min(int(n), len(data["rgb"]))
    rgb = torch.from_numpy(data["rgb"][:n]).permute(0, 3, 1, 2)  # (n, 3, H, W) uint8
    hw = backbone.work_size(tuple(rgb.shape[-2:]))
    z = torch.cat([backbone.encode_image(backbone.resize_to_work(rgb[i:i + batch].float() / 255.0, hw), refine_steps=0).cpu()
                   for i in range(0, n, batch)])
    depth = torch.from_numpy(data["depth"][:n])[:, None]
    return fit(backbone, captions_of(data)[0][:n], depth, z, blocks=blocks, holdout=holdout)


def fit_with_record(backbone, data: dict, n: int | None = None, blocks: int = BLOCKS,
                    holdout: float = 0.0) -> tuple[LeakPrior, dict]:
    """:func:`fit_dataset`, timed, with the training record :func:`write_model` stores:
    ``{"date", "hardware", "stages": {"leak_prior": {"images", "blocks", "seconds"[, "holdout",
    "heldout_r2"]}}, "hours"}``."""
    import datetime
    import platform
    import time

    start = time.perf_counter()
    prior, r2 = fit_dataset(backbone, data, n, blocks=blocks, holdout=holdout)
    seconds = time.perf_counter() - start
    images = min(n or len(data["rgb"]), len(data["rgb"]))
    stage = {"images": images, "blocks": blocks, "seconds": round(seconds, 1)}
    if r2 is not None:
        stage.update(holdout=holdout, heldout_r2=round(r2, 4))
    threads = torch.get_num_threads()
    record = {"date": datetime.date.today().isoformat(),
              "hardware": f"CPU ({platform.processor() or platform.machine()}), {threads} thread(s)",
              "stages": {"leak_prior": stage}, "hours": round(seconds / 3600, 3)}
    return prior, record


def write_model(model: str | Path, prior: LeakPrior, out: str | Path, record: dict | None = None) -> Path:
    """A copy of the model folder ``model`` with ``prior`` in it, at the new folder ``out``
    (staged by :func:`~diffusion_handles.outputs.atomic_output_dir`: whole or not at all).

    ``record`` (e.g. ``{"date", "hardware", "stages": {"leak_prior": {"images", "seconds"}},
    "hours"}``) is appended to the ``history`` of the copy's ``training.json``, when it has one.
    """
    import json
    import shutil

    from diffusion_handles.outputs import atomic_output_dir

    with atomic_output_dir(out) as tmp:
        shutil.copytree(model, tmp, dirs_exist_ok=True)
        prior.save(tmp)
        log = tmp / "training.json"
        if record is not None and log.is_file():
            info = json.loads(log.read_text())
            info["history"] = [*info.get("history", []), record]
            info["cumulative_hours"] = cumulative_hours(info["history"])
            log.write_text(json.dumps(info, indent=2))
    return Path(out)
