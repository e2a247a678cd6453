"""The "inverted image": everything edit-independent, computed once and reused for many edits.

Saved as a folder holding ``tensors.safetensors`` (all tensors, bit-exact) and ``meta.json``
(prompt, model id and weights digest, configs, sizes, the record plan, timings, UNet counts and
a SHA-256 of the tensors). Folders are named by :func:`inversion_key`, a SHA-256 of every input
including the model's weights, so a cache directory maps inputs to results. A folder is
written atomically (staged, then renamed into place) and verified when read
(:meth:`InvertedImage.load`): a truncated, garbled or altered entry is never used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffusion_handles.diffusion.config import InversionConfig
from diffusion_handles.errors import HandlesError, first_line

FORMAT_VERSION = 3  # 2: the reconstruction trajectory is stored; 3: weights digest and tensor checksum
TENSOR_FILE = "tensors.safetensors"
META_FILE = "meta.json"


_BASE_TENSORS = ("image", "depth", "mask", "x_T", "latent_0", "text_embedding", "reconstruction")


class CacheEntryError(HandlesError):
    """A saved inverted image that cannot be trusted (missing, truncated, altered or foreign)."""


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of named tensors: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def inversion_key(inputs: Sequence[torch.Tensor], prompt: str, config: InversionConfig,
                  record_plan: dict[int, tuple[int, ...]], *, seed: int | None = None, model: dict) -> str:
    """SHA-256 (hex, 24 chars) of every input that changes an inversion's result.

    Args:
        inputs: the work-size ``(image, depth, mask)`` tensors.
        prompt, config, record_plan, seed: as :meth:`DiffusionHandles.invert` uses them.
        model: ``{"model": id, "dtype": "torch.float32", "weights": digest}``; the weights'
            digest (:attr:`Backbone.weights_digest`, or ``""``) ties the key to the model's weights,
            not just its name: a model retrained at the same path never reuses the old inversions.
    """
    h = hashlib.sha256()
    for t in inputs:
        a = t.detach().to("cpu", torch.float32).contiguous()
        h.update(str(tuple(a.shape)).encode())
        h.update(a.numpy().tobytes())
    meta = {"prompt": prompt, "model": model["model"], "config": config.to_dict(), "dtype": model["dtype"],
            "record": sorted((int(s), list(v)) for s, v in record_plan.items()), "version": FORMAT_VERSION, "seed": seed,
            "weights": model["weights"]}
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
        (``None`` if not kept); context_depth ``(1, 1, h', w')`` the whole photo's z-depth at the
        model's size when the model saw only a window of it (``config.window``), else ``None``.
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
    context_depth: torch.Tensor | None = None
    weights_digest: str = ""
    cache_hit: bool = False  # set when loaded from a cache instead of computed (not saved)
    verified: bool = False  # :meth:`problem` found nothing (set by ``load`` and ``invert``; edits skip the check)
    # values derived from this inversion that every edit of it would recompute (not saved; shared
    # by the copies ``to`` makes, so the edits of one inversion compute each once)
    memo: dict = field(default_factory=dict, repr=False, compare=False)

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
        d["context_depth"] = None if self.context_depth is None else self.context_depth.to(device)
        d["activations"] = {k: v.to(device) for k, v in self.activations.items()}
        return InvertedImage(**d)

    # ---- disk ----------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor under the name it is saved with (``act.<layer>.<step>`` for activations), on the CPU."""
        return {k: v.detach().cpu().contiguous() for k, v in self._named().items()}

    def _named(self) -> dict[str, torch.Tensor]:
        out = {name: getattr(self, name) for name in _BASE_TENSORS}
        if self.null_embeddings is not None:
            out["null_embeddings"] = self.null_embeddings
        if self.trajectory is not None:
            out["trajectory"] = self.trajectory
        if self.context_depth is not None:
            out["context_depth"] = self.context_depth
        for (layer, step), t in self.activations.items():
            out[f"act.{layer}.{step}"] = t
        return out

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/tensors.safetensors`` and ``folder/meta.json``, atomically.

        The files are staged in a sibling folder and renamed into place, so a reader (or a
        concurrent writer of the same entry) never sees half an entry; an existing ``folder`` is
        replaced whole.
        """
        from safetensors.torch import save_file

        from diffusion_handles.outputs import atomic_output_dir

        folder = Path(folder)
        tensors = self.tensors()
        meta = {
            "format_version": FORMAT_VERSION, "model_id": self.model_id, "prompt": self.prompt,
            "config": self.config.to_dict(), "input_hw": list(self.input_hw), "key": self.key,
            "record_plan": {str(s): list(v) for s, v in self.record_plan.items()},
            "timings": self.timings, "unet_evals": self.unet_evals, "null_losses": self.null_losses,
            "seed": self.seed, "weights_digest": self.weights_digest, "checksum": tensor_checksum(tensors),
        }
        with atomic_output_dir(folder) as tmp:
            save_file(tensors, str(tmp / TENSOR_FILE))
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @staticmethod
    def load(folder: str | Path, device: str | torch.device = "cpu", *, key: str | None = None,
             weights_digest: str | None = None) -> InvertedImage:
        """Read and verify a saved inverted image.

        Verified: both files present and readable, the format version, every required tensor
        and meta field, shapes consistent with each other and with the record plan, floating
        dtypes, finite values, and the SHA-256 of the tensors against the one saved. With
        ``key`` / ``weights_digest`` the entry must also have been made for those inputs and
        weights. Raises :class:`CacheEntryError` (one line: the folder and what is wrong).
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / TENSOR_FILE).is_file() or not (folder / META_FILE).is_file():
            raise CacheEntryError(f"inverted image: expected {TENSOR_FILE} and {META_FILE} in {folder}, not found")
        try:
            meta = json.loads((folder / META_FILE).read_text())
            tensors = load_file(str(folder / TENSOR_FILE), device="cpu")
        except Exception as e:
            raise CacheEntryError(f"inverted image: could not read {folder}: {first_line(e)}") from None
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            got = meta.get("format_version") if isinstance(meta, dict) else type(meta).__name__
            raise CacheEntryError(f"inverted image: expected format version {FORMAT_VERSION}, got {got} in {folder}")
        try:
            inv = _from_saved(meta, tensors)
            problem = inv.problem()
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CacheEntryError(f"inverted image: {folder}: malformed entry ({type(e).__name__}: {first_line(e)})") from None
        if problem is None and meta.get("checksum") != tensor_checksum(tensors):
            problem = "the tensors do not match their saved checksum (altered or corrupted)"
        if problem is None and key is not None and inv.key != key:
            problem = f"made for other inputs (key {inv.key!r}, expected {key!r})"
        if problem is None and weights_digest is not None and inv.weights_digest != weights_digest:
            problem = "made with other model weights"
        if problem is not None:
            raise CacheEntryError(f"inverted image: {folder}: {problem}")
        inv.verified = True
        return inv.to(device)

    def problem(self) -> str | None:
        """What makes this inverted image unusable (``None`` if nothing): missing or
        inconsistent shapes, non-floating dtypes, non-finite values, activations that do not
        match the record plan."""
        t = self._named()
        img = t["image"]
        if img.dim() != 4 or img.shape[:2] != (1, 3) or min(img.shape[-2:]) < 1:
            return f"image: expected shape (1, 3, H, W), got {tuple(img.shape)}"
        hw = tuple(img.shape[-2:])
        for name in ("depth", "mask"):
            if tuple(t[name].shape) != (1, 1, *hw):
                return f"{name}: expected shape {(1, 1, *hw)}, got {tuple(t[name].shape)}"
        if tuple(t["reconstruction"].shape) != tuple(img.shape):
            return f"reconstruction: expected shape {tuple(img.shape)}, got {tuple(t['reconstruction'].shape)}"
        lat = tuple(t["x_T"].shape)
        if len(lat) != 4 or lat[0] != 1 or tuple(t["latent_0"].shape) != lat:
            return f"x_T / latent_0: expected equal shapes (1, c, h, w), got {lat} and {tuple(t['latent_0'].shape)}"
        txt = tuple(t["text_embedding"].shape)
        if len(txt) != 3 or txt[0] != 1:
            return f"text_embedding: expected shape (1, L, D), got {txt}"
        n = int(self.config.num_steps)
        if "null_embeddings" in t and tuple(t["null_embeddings"].shape) != (n, *txt[1:]):
            return f"null_embeddings: expected shape {(n, *txt[1:])}, got {tuple(t['null_embeddings'].shape)}"
        if "trajectory" in t and tuple(t["trajectory"].shape) != (n, *lat[1:]):
            return f"trajectory: expected shape {(n, *lat[1:])}, got {tuple(t['trajectory'].shape)}"
        planned = {(int(layer), int(step)) for step, layers in self.record_plan.items() for layer in layers}
        if planned != set(self.activations):
            return f"activations: expected (layer, step) {sorted(planned)[:4]}..., got {sorted(self.activations)[:4]}..."
        for name, v in t.items():
            if name.startswith("act.") and (v.dim() != 4 or v.shape[0] != 1):
                return f"{name}: expected shape (1, C, h, w), got {tuple(v.shape)}"
            if not v.is_floating_point():
                return f"{name}: expected a floating-point tensor, got {v.dtype}"
            if not bool(torch.isfinite(v).all()):
                return f"{name}: holds non-finite values (NaN or inf)"
        return None


def _from_saved(meta: dict, tensors: dict[str, torch.Tensor]) -> InvertedImage:
    acts = {}
    for name, t in tensors.items():
        if name.startswith("act."):
            _, layer, step = name.split(".")
            acts[(int(layer), int(step))] = t
    hw = tuple(int(v) for v in meta["input_hw"])
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"input_hw: expected two positive sizes, got {meta['input_hw']}")
    for name in ("model_id", "prompt"):
        if not isinstance(meta[name], str):
            raise TypeError(f"{name}: expected text, got {type(meta[name]).__name__}")
    window = meta["config"].get("window")
    if window is not None and not (0 <= window[0] < window[2] <= hw[1] and 0 <= window[1] < window[3] <= hw[0]):
        raise ValueError(f"config.window: expected a box inside the {hw[1]}x{hw[0]} image, got {window}")
    return InvertedImage(
        model_id=meta["model_id"], prompt=meta["prompt"], config=InversionConfig(**meta["config"]),
        record_plan={int(s): tuple(int(x) for x in v) for s, v in meta["record_plan"].items()},
        input_hw=hw,  # type: ignore[arg-type]
        image=tensors["image"], depth=tensors["depth"], mask=tensors["mask"], x_T=tensors["x_T"],
        latent_0=tensors["latent_0"], text_embedding=tensors["text_embedding"],
        null_embeddings=tensors.get("null_embeddings"), reconstruction=tensors["reconstruction"],
        activations=acts, key=str(meta.get("key", "")), timings=meta.get("timings", {}),
        unet_evals=meta.get("unet_evals", {}), null_losses=meta.get("null_losses", []),
        seed=meta.get("seed"), trajectory=tensors.get("trajectory"), context_depth=tensors.get("context_depth"),
        weights_digest=str(meta.get("weights_digest", "")),
    )
