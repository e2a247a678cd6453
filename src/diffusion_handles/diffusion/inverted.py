"""The "inverted image": everything edit-independent, computed once and reused for many edits.

Saved as a folder holding ``tensors.safetensors`` (all tensors, bit-exact) and ``meta.json``
(prompt, model id, configs, sizes, the record plan, timings and UNet counts). Folders are named
by :func:`inversion_key`, a SHA-256 of the inputs, so a cache directory maps inputs to results.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffusion_handles.diffusion.config import InversionConfig
from diffusion_handles.errors import HandlesError

FORMAT_VERSION = 2  # 2: the reconstruction trajectory is stored (latent blending)
TENSOR_FILE = "tensors.safetensors"
META_FILE = "meta.json"


def inversion_key(image: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, prompt: str, model_id: str,
                  config: InversionConfig, record_plan: dict[int, tuple[int, ...]], dtype: torch.dtype,
                  seed: int | None = None) -> str:
    """SHA-256 (hex, 24 chars) of every input that changes an inversion's result."""
    h = hashlib.sha256()
    for t in (image, depth, mask):
        a = t.detach().to("cpu", torch.float32).contiguous()
        h.update(str(tuple(a.shape)).encode())
        h.update(a.numpy().tobytes())
    meta = {"prompt": prompt, "model": model_id, "config": config.to_dict(), "dtype": str(dtype),
            "record": sorted((int(s), list(v)) for s, v in record_plan.items()), "version": FORMAT_VERSION, "seed": seed}
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()[:24]


@dataclass
class InvertedImage:
    """Result of :meth:`DiffusionHandles.invert` (Sec. 5, step (i)).

    Tensors (all at the *work size* ``H x W`` the model accepts, float32 unless noted):
        image ``(1, 3, H, W)`` in [0, 1]; depth ``(1, 1, H, W)`` z-depth, scene units;
        mask ``(1, 1, H, W)`` M_o in {0, 1}; x_T ``(1, c, h, w)`` initial noise latent;
        latent_0 ``(1, c, h, w)`` the encoded input; text_embedding ``(1, L, D)``;
        null_embeddings ``(N, L, D)`` per-step null text, or ``None`` when the null text is
        the prompt (negative-prompt inversion); reconstruction ``(1, 3, H, W)`` the decoded
        reconstruction; activations ``{(layer, step): (1, C, h_l, w_l)}`` (model dtype or the
        record dtype); trajectory ``(N, c, h, w)`` the reconstruction's latent after each step
        (``None`` if not kept).
    """

    model_id: str
    prompt: str
    config: InversionConfig
    record_plan: dict[int, tuple[int, ...]]
    input_hw: tuple[int, int]
    image: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor
    x_T: torch.Tensor
    latent_0: torch.Tensor
    text_embedding: torch.Tensor
    null_embeddings: torch.Tensor | None
    reconstruction: torch.Tensor
    activations: dict[tuple[int, int], torch.Tensor]
    key: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    unet_evals: dict[str, dict[str, int]] = field(default_factory=dict)
    null_losses: list[float] = field(default_factory=list)
    seed: int | None = None
    trajectory: torch.Tensor | None = None
    cache_hit: bool = False  # set when loaded from a cache instead of computed (not saved)

    @property
    def activation_bytes(self) -> int:
        """Memory taken by the recorded activations."""
        return sum(t.numel() * t.element_size() for t in self.activations.values())

    def to(self, device: str | torch.device) -> InvertedImage:
        d = dict(self.__dict__)
        for name in ("image", "depth", "mask", "x_T", "latent_0", "text_embedding", "reconstruction"):
            d[name] = getattr(self, name).to(device)
        d["null_embeddings"] = None if self.null_embeddings is None else self.null_embeddings.to(device)
        d["trajectory"] = None if self.trajectory is None else self.trajectory.to(device)
        d["activations"] = {k: v.to(device) for k, v in self.activations.items()}
        return InvertedImage(**d)

    # ---- disk ----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``folder/tensors.safetensors`` and ``folder/meta.json`` (atomically)."""
        from safetensors.torch import save_file

        from diffusion_handles.outputs import atomic_output_dir

        tensors = {name: getattr(self, name).detach().cpu().contiguous()
                   for name in ("image", "depth", "mask", "x_T", "latent_0", "text_embedding", "reconstruction")}
        if self.null_embeddings is not None:
            tensors["null_embeddings"] = self.null_embeddings.detach().cpu().contiguous()
        if self.trajectory is not None:
            tensors["trajectory"] = self.trajectory.detach().cpu().contiguous()
        for (layer, step), t in self.activations.items():
            tensors[f"act.{layer}.{step}"] = t.detach().cpu().contiguous()
        meta = {
            "format_version": FORMAT_VERSION, "model_id": self.model_id, "prompt": self.prompt,
            "config": self.config.to_dict(), "input_hw": list(self.input_hw), "key": self.key,
            "record_plan": {str(s): list(v) for s, v in self.record_plan.items()},
            "timings": self.timings, "unet_evals": self.unet_evals, "null_losses": self.null_losses,
            "seed": self.seed,
        }
        with atomic_output_dir(folder) as tmp:
            save_file(tensors, str(tmp / TENSOR_FILE))
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        return Path(folder)

    @staticmethod
    def load(folder: str | Path, device: str | torch.device = "cpu") -> InvertedImage:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / TENSOR_FILE).is_file() or not (folder / META_FILE).is_file():
            raise HandlesError(f"inverted image: expected {TENSOR_FILE} and {META_FILE} in {folder}, not found")
        try:
            meta = json.loads((folder / META_FILE).read_text())
            tensors = load_file(str(folder / TENSOR_FILE), device=str(device))
        except Exception as e:
            raise HandlesError(f"inverted image: could not read {folder}: {e}") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise HandlesError(f"inverted image: expected format version {FORMAT_VERSION}, got {meta.get('format_version')} in {folder}")
        acts = {}
        for name, t in tensors.items():
            if name.startswith("act."):
                _, layer, step = name.split(".")
                acts[(int(layer), int(step))] = t
        return InvertedImage(
            model_id=meta["model_id"], prompt=meta["prompt"], config=InversionConfig(**meta["config"]),
            record_plan={int(s): tuple(v) for s, v in meta["record_plan"].items()},
            input_hw=tuple(meta["input_hw"]),
            image=tensors["image"], depth=tensors["depth"], mask=tensors["mask"], x_T=tensors["x_T"],
            latent_0=tensors["latent_0"], text_embedding=tensors["text_embedding"],
            null_embeddings=tensors.get("null_embeddings"), reconstruction=tensors["reconstruction"],
            activations=acts, key=meta.get("key", ""), timings=meta.get("timings", {}),
            unet_evals=meta.get("unet_evals", {}), null_losses=meta.get("null_losses", []),
            seed=meta.get("seed"), trajectory=tensors.get("trajectory"),
        )
