"""The depth-conditioned latent diffusion backbone (Stable Diffusion 2 depth layout, Sec. 4).

Components, all standard diffusers/transformers classes: ``UNet2DConditionModel`` whose input is
the noisy latent concatenated with one depth channel (``in_channels = latent + 1``),
``AutoencoderKL`` (or ``AsymmetricAutoencoderKL``), ``CLIPTextModel`` + ``CLIPTokenizer`` and a DDIM scheduler built from the
model's scheduler config. Constants (latent scaling factor, sizes, channels) are read from the
component configs. Every UNet evaluation goes through :meth:`Backbone.unet_eval`, which counts
forward and backward passes per stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from diffusion_handles.diffusion.ddim import Schedule, make_schedule
from diffusion_handles.errors import HandlesError, first_line

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-depth"
TINYWORLD_NAME = "tinyworld"
# A model folder may carry this project's settings for it (JSON data, read by from_pretrained):
# {"encode_refine_steps": N}, the steps of :func:`refine_latent` its encoder needs. Hub models
# have none (0: the encoder's latent as it is, as Stable Diffusion's pipelines take it).
SETTINGS_FILE = "handles.json"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")  # a diffusers pipeline's parts we use
REFINE_LR = 5e-2  # Adam learning rate of refine_latent
REFINE_ANCHOR = 0.05  # weight of the drift from the encoder's latent in refine_latent's objective


@dataclass
class EvalCounter:
    """UNet evaluations per stage. One *evaluation* is one sample through the network (a call on
    a batch of B counts B forward evaluations); one backward pass through a batch-1 call counts
    1 backward evaluation. ``calls`` counts UNet calls."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    stage: str = "other"

    def _entry(self) -> dict[str, int]:
        return self.counts.setdefault(self.stage, {"forward": 0, "backward": 0, "calls": 0})

    def add_forward(self, n: int) -> None:
        e = self._entry()
        e["forward"] += n
        e["calls"] += 1

    def add_backward(self, n: int) -> None:
        self._entry()["backward"] += n

    @contextlib.contextmanager
    def in_stage(self, name: str) -> Iterator[None]:
        prev, self.stage = self.stage, name
        try:
            yield
        finally:
            self.stage = prev


def _resolve_tinyworld() -> str:
    """Folder of the embedded miniature model, asked of the world layer (a higher layer, so it is
    imported lazily by name). The world package provides one of the helpers named below."""
    helpers = ("tinyworld_model_path", "model_path", "resolve_model")
    for module_name in ("diffusion_handles.world", "diffusion_handles.world.model"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        for name in helpers:
            fn = getattr(module, name, None)
            if callable(fn):
                try:
                    return str(fn())
                except HandlesError:
                    raise
                except Exception as e:
                    raise HandlesError(f"--model: could not resolve {TINYWORLD_NAME!r}: {first_line(e)}") from None
    raise HandlesError(f"--model: {TINYWORLD_NAME!r} is not available in this installation (no model helper in diffusion_handles.world); pass --model a diffusers folder")


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move to device/dtype only where needed (frozen, eval mode)."""
    p = next(module.parameters())
    if p.device != device:
        module = module.to(device)
    if p.dtype != dtype:
        module = module.to(dtype)
    return module.eval().requires_grad_(False)


def _load_components(source: str, local_files_only: bool) -> tuple:
    from diffusers import AutoModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = {"local_files_only": local_files_only}
    return (
        UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw),
        # the class its config names: SD2-depth's AutoencoderKL, or an AsymmetricAutoencoderKL
        # (a wider encoder than decoder, world.model.widen_encoder)
        AutoModel.from_pretrained(source, subfolder="vae", **kw),
        CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw),
        CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw),
        DDIMScheduler.from_pretrained(source, subfolder="scheduler", **kw),
    )


def _load_or_fail(name: str, source: str, local_files_only: bool) -> tuple:
    """Load, quieting the hub client's retry chatter; any failure becomes one HandlesError line."""
    import logging

    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _load_components(source, local_files_only)
    except Exception as e:  # OSError (offline / missing), ValueError (bad config), ...
        raise HandlesError(f"--model: could not load {name!r} ({type(e).__name__}: {first_line(e)}); no network or weights here? pass --model a local diffusers folder") from None
    finally:
        hub_logger.setLevel(level)


def refine_latent(vae, x: torch.Tensor, z: torch.Tensor, steps: int, lr: float = REFINE_LR,
                  anchor: float = REFINE_ANCHOR) -> torch.Tensor:
    """The latent the (frozen) decoder draws ``x`` best from, held near the encoder's ``z``.

    Semi-amortised inference (Kim et al. 2018, "Semi-Amortized Variational Autoencoders"): the
    encoder's latent is the start of ``steps`` Adam steps on
    ``mean((decode(z*) - x)^2) + anchor * mean((z* - z)^2) / var(z)``. The anchor keeps ``z*``
    within a few percent of the latents a UNet was trained on.

    Args:
        vae: a diffusers VAE; its parameters are not changed.
        x: ``(B, 3, H, W)`` image in [-1, 1], in the VAE's dtype.
        z: ``(B, c, H/f, W/f)`` unscaled latent (the posterior mode or a sample).
        steps: Adam steps; 0 returns ``z``.
    Returns ``(B, c, H/f, W/f)``, float32.
    """
    z = z.detach().float()
    if steps <= 0:
        return z
    zz = z.clone().requires_grad_(True)
    opt = torch.optim.Adam([zz], lr=lr)
    var = z.var()
    dtype = next(vae.parameters()).dtype
    with torch.enable_grad():
        for _ in range(steps):
            err = (vae.decode(zz.to(dtype)).sample.float() - x.float()).pow(2).mean()
            loss = err + anchor * (zz - z).pow(2).mean() / var
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return zz.detach()


def read_settings(folder: Path) -> dict:
    """The settings file of a model folder (:data:`SETTINGS_FILE`), checked; ``{}`` without one."""
    f = folder / SETTINGS_FILE
    if not f.is_file():
        return {}
    try:
        d = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise HandlesError(f"--model: {f} is not readable JSON ({first_line(e)})") from None
    steps = d.get("encode_refine_steps", 0) if isinstance(d, dict) else None
    if not isinstance(steps, int) or isinstance(steps, bool) or not 0 <= steps <= 1000:
        raise HandlesError(f"--model: {f}: expected {{\"encode_refine_steps\": an integer in [0, 1000]}}, got {json.dumps(d)[:80]}")
    return {"encode_refine_steps": steps}


def model_folder(model: str | Path) -> Path | None:
    """The local folder ``model`` names (``"tinyworld"`` resolved to its folder); ``None`` for a hub id."""
    name = str(model)
    path = Path(_resolve_tinyworld() if name == TINYWORLD_NAME else name)
    return path if path.is_dir() else None


def model_settings(model: str | Path) -> dict:
    """The settings file of the model ``model`` names (:func:`read_settings`; ``"tinyworld"``
    resolved to its folder), without loading any weights; ``{}`` for a hub id."""
    path = model_folder(model)
    return read_settings(path) if path is not None else {}


class Backbone:
    """UNet + VAE + text encoder + tokenizer + scheduler of a depth-conditioned model.

    Build with :meth:`from_pretrained` (hub id or local folder) or from components directly.
    """

    def __init__(self, parts: Mapping[str, Any], *, model_id: str = "custom",
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 encode_refine_steps: int = 0) -> None:
        """``parts``: the diffusers components ``{"unet", "vae", "text_encoder", "tokenizer",
        "scheduler"}`` (as :func:`~diffusion_handles.diffusion.random_models.build_backbone_components`
        returns them)."""
        from diffusers import DDIMScheduler

        missing = sorted(set(COMPONENTS) - set(parts))
        if missing:
            raise HandlesError(f"parts: expected the components {', '.join(COMPONENTS)}, missing {', '.join(missing)}")
        unet, vae, text_encoder, tokenizer, scheduler = (parts[k] for k in COMPONENTS)

        self.device = torch.device(device)
        self.dtype = dtype
        if self.device.type == "cpu" and dtype != torch.float32:
            raise HandlesError(f"--dtype: expected float32 on cpu (float16/bfloat16 need a GPU), got {str(dtype).replace('torch.', '')}")
        self.unet = _place(unet, self.device, dtype)
        self.vae = _place(vae, self.device, dtype)
        self.text_encoder = _place(text_encoder, self.device, dtype)
        self.tokenizer = tokenizer
        # DDIM on the model's own noise schedule (Sec. 4 sampler; SD2-depth ships a PNDM config).
        self.scheduler = DDIMScheduler.from_config(scheduler.config)
        self.model_id = model_id
        self.encode_refine_steps = int(encode_refine_steps)  # the model's own; encode_image's default
        self.counter = EvalCounter()
        self._weights_digest: str | None = None
        latent_ch = int(self.vae.config.latent_channels)
        if int(self.unet.config.in_channels) != latent_ch + 1:
            raise HandlesError(f"--model: expected a depth-conditioned UNet with in_channels = {latent_ch} latent + 1 depth, got in_channels={self.unet.config.in_channels} ({model_id})")

    # ---- constants read from the model -------------------------------------------------
    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.down_block_types) - 1)  # every encoder block but the last halves

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (VAE factor x UNet downsampling)."""
        return self.vae_factor * 2 ** (len(self.unet.config.down_block_types) - 1)

    @property
    def default_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_factor

    @property
    def num_up_blocks(self) -> int:
        return len(self.unet.up_blocks)

    @property
    def weights_digest(self) -> str:
        """SHA-256 (hex) of the weights themselves, computed once per loaded model.

        Covers every parameter and buffer of the UNet, VAE and text encoder (name, dtype, shape,
        bytes) and the scheduler's config, so a model retrained in place (same path, same id)
        gets a new digest and inversions cached with the old weights are never reused.
        """
        if self._weights_digest is None:
            h = hashlib.sha256()
            for part, module in (("unet", self.unet), ("vae", self.vae), ("text_encoder", self.text_encoder)):
                for name, t in module.state_dict().items():
                    a = t.detach().cpu().contiguous().reshape(-1)
                    h.update(f"{part}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
                    h.update(a.view(torch.uint8).numpy().tobytes())
            extra = {"scheduler": dict(self.scheduler.config), "scaling_factor": self.scaling_factor}
            h.update(json.dumps(extra, sort_keys=True, default=str).encode())
            self._weights_digest = h.hexdigest()
        return self._weights_digest

    def schedule(self, num_steps: int) -> Schedule:
        return make_schedule(self.scheduler, num_steps)

    # ---- loading -----------------------------------------------------------------------
    @staticmethod
    def from_pretrained(model: str | Path = DEFAULT_MODEL, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, local_files_only: bool = False) -> Backbone:
        """Load from a hub id, a local diffusers folder (``unet/ vae/ text_encoder/ tokenizer/
        scheduler/``, with or without ``model_index.json``), or the name ``"tinyworld"``.

        Raises :class:`HandlesError` (one line naming the model and ``--model``) when the model
        cannot be loaded (no network, no cached weights, wrong layout).
        """
        name = str(model)
        source = _resolve_tinyworld() if name == TINYWORLD_NAME else name
        path = Path(source)
        if path.exists():
            if not path.is_dir():
                raise HandlesError(f"--model: expected a diffusers model folder or hub id, got a file: {path}")
            missing = [s for s in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (path / s).is_dir()]
            if missing:
                raise HandlesError(f"--model: folder {path} lacks the diffusers sub-folders {', '.join(missing)}/ (expected unet/ vae/ text_encoder/ tokenizer/ scheduler/)")
        elif source.startswith(("/", "./", "../", "~")) or source.count("/") > 1 or "\\" in source:
            raise HandlesError(f"--model: folder not found: {name} (expected a diffusers model folder or a hub id like {DEFAULT_MODEL})")
        settings = {}
        if path.exists():
            settings = read_settings(path)
            parts = _load_or_fail(name, source, local_files_only=True)
        else:  # a hub id: the local cache first, the network only when it is reachable
            from diffusion_handles.hub import load_pretrained

            def load(src: str, local_only: bool) -> tuple:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return _load_components(src, local_only or local_files_only)

            parts = load_pretrained(load, source, what="depth-to-image", option="--model",
                                    bypass="use --model tinyworld (the embedded offline model)")
        return Backbone(dict(zip(COMPONENTS, parts, strict=True)), model_id=name, device=device, dtype=dtype,
                        **settings)

    # ---- encoders ----------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """Text to CLIP embeddings ``(1, L, D)`` (last hidden state, as SD2 uses)."""
        max_len = min(int(self.tokenizer.model_max_length), int(self.text_encoder.config.max_position_embeddings))
        tok = self.tokenizer([prompt], padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
        return self.text_encoder(tok.input_ids.to(self.device))[0].to(self.dtype)

    def encode_image(self, image: torch.Tensor, generator: torch.Generator | None = None,
                     refine_steps: int | None = None) -> torch.Tensor:
        """``(1, 3, H, W)`` in ``[0, 1]`` to the scaled latent ``(1, c, H/f, W/f)``, float32.

        Latents stay float32 through inversion and sampling whatever the model dtype; only the
        networks run in ``dtype``.

        With a ``generator`` the VAE posterior is sampled (as diffusers' depth2img pipeline
        does); without one its mode is taken. Then ``refine_steps`` steps of
        :func:`refine_latent` (``None``: the model's own, :attr:`encode_refine_steps`).
        """
        x = image.to(self.device, self.dtype) * 2.0 - 1.0
        with torch.no_grad():
            dist = self.vae.encode(x).latent_dist
            z = dist.mode() if generator is None else dist.sample(generator)
        steps = self.encode_refine_steps if refine_steps is None else int(refine_steps)
        return refine_latent(self.vae, x, z, steps) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled latent to ``(1, 3, H, W)`` float32 in ``[0, 1]``."""
        x = self.vae.decode(latent.to(self.dtype) / self.scaling_factor).sample
        return ((x.float() + 1.0) / 2.0).clamp(0, 1)

    def latent_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return image_hw[0] // self.vae_factor, image_hw[1] // self.vae_factor

    # ---- the one UNet entry point ------------------------------------------------------
    def unet_eval(self, latent: torch.Tensor, timestep: int | torch.Tensor, text: torch.Tensor,
                  depth_cond: torch.Tensor) -> torch.Tensor:
        """``eps_theta(x_t; t, y, d)`` for a batch. ``latent (B, c, h, w)``, ``timestep`` one ``t``
        for the batch or a ``(B,)`` long tensor (one per sample), ``text (B, L, D)``,
        ``depth_cond (1 or B, 1, h, w)`` from :func:`depth_to_condition`. Counted in
        :attr:`counter` as ``B`` forward evaluations; callers that back-propagate through the
        call add its backward evaluations with ``counter.add_backward``."""
        b = latent.shape[0]
        if depth_cond.shape[0] != b:
            depth_cond = depth_cond.expand(b, -1, -1, -1)
        x = torch.cat([latent, depth_cond.to(latent.dtype)], dim=1)  # (B, c + 1, h, w)
        t = (timestep.to(self.device, torch.long) if isinstance(timestep, torch.Tensor) else
             torch.full((b,), timestep, device=self.device, dtype=torch.long))
        out = self.unet(x.to(self.dtype), t, encoder_hidden_states=text.to(self.dtype)).sample
        self.counter.add_forward(b)
        return out

    def resize_to_work(self, x: torch.Tensor, hw: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(hw):
            return x
        if mode == "nearest":
            return F.interpolate(x, size=hw, mode="nearest")
        return F.interpolate(x, size=hw, mode=mode, align_corners=False, antialias=True)

    def model_size(self, hw: tuple[int, int], upscale: bool = False) -> tuple[int, int]:
        """The size an input of ``hw`` is edited at: scaled down so its longer side is at most
        :attr:`default_size` (512 for SD2-depth, 128 for TinyWorld: the size the model was trained
        at; with ``upscale``, a smaller input, an edit window, is scaled up to it), then snapped to
        :meth:`work_size`. The result is brought back to ``hw`` (stage 6), so the model's cost
        does not depend on the photo's size."""
        h, w = (int(v) for v in hw)
        s = self.default_size / max(h, w)
        s = s if upscale else min(1.0, s)
        return self.work_size((max(1, round(h * s)), max(1, round(w * s))))

    def work_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """The nearest image size the model accepts (each side a multiple of :attr:`size_multiple`)."""
        m = self.size_multiple
        return tuple(max(m, int(round(s / m)) * m) for s in hw)  # type: ignore[return-value]
