"""Join two runs trained side by side from one warm start into one model folder.

On a 2-core CPU (and on one GPU, which a small UNet leaves idle between kernels) a training run
can be two processes at once: ``handles world train`` for the UNet + text encoder, and ``--stage
encoder`` for the VAE's encoder alone. The encoder stage freezes the decoder, ``post_quant_conv``
and the latent scale, and anchors its latents to those the UNet learned, so the UNet run's UNet
and the encoder run's VAE belong together. :func:`join` writes that model: the first folder with
the second's ``vae/``, after checking that the two VAEs share the decoder and latent space bit
for bit (a VAE whose decoder changed would decode the UNet's latents into other images).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from diffusion_handles.errors import HandlesError
from diffusion_handles.outputs import atomic_output_dir
from diffusion_handles.world.model import component_tensors, cumulative_hours

DECODER_KEYS = ("decoder.", "post_quant_conv.")  # what the encoder stage leaves untouched
LATENT_CONFIG = ("latent_channels", "scaling_factor")  # the decoder's structure: its tensors' names and shapes


def _read(folder: Path, name: str) -> tuple[dict, dict]:
    """``(model_index, training)`` of a model folder, checked to hold a VAE and a UNet."""
    if not (folder / "model_index.json").is_file() or not (folder / "vae").is_dir() or not (folder / "unet").is_dir():
        raise HandlesError(f"{name}: expected a model folder (model_index.json, vae/, unet/), got {folder}")
    training = folder / "training.json"
    return (json.loads((folder / "model_index.json").read_text()),
            json.loads(training.read_text()) if training.is_file() else {"history": []})


def check_same_decoder(unet_model: Path, encoder_model: Path, names: tuple[str, str]) -> None:
    """Raise unless the two VAEs decode the same latents into the same images."""
    import torch

    cfg = [json.loads((m / "vae" / "config.json").read_text()) for m in (unet_model, encoder_model)]
    for key in LATENT_CONFIG:
        if cfg[0].get(key) != cfg[1].get(key):
            raise HandlesError(f"{names[1]}: expected the VAE {key} of {names[0]} ({cfg[0].get(key)}), "
                               f"got {cfg[1].get(key)}")
    a, b = component_tensors(unet_model, "vae"), component_tensors(encoder_model, "vae")
    keys = sorted(k for k in a if k.startswith(DECODER_KEYS))
    differ = [k for k in keys if k not in b or a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    if not keys or differ:
        raise HandlesError(f"{names[1]}: expected the decoder of {names[0]} (an encoder-stage run from the same "
                           f"warm start), got {len(differ)} of {len(keys)} decoder tensors different "
                           f"(first: {differ[0] if differ else 'none found'})")


def join(unet_model: str | Path, encoder_model: str | Path, out: str | Path,
         names: tuple[str, str, str] = ("unet_model", "encoder_model", "out")) -> Path:
    """Write ``out``: ``unet_model`` (UNet, text encoder, tokenizer, scheduler) with ``encoder_model``'s VAE.

    ``training.json`` keeps ``unet_model``'s record and appends the runs of ``encoder_model``
    that ``unet_model`` does not have (both start from the warm start's history), so the
    cumulative hours count both runs. ``out`` must be new or empty; it appears complete or not at all.
    ``names`` are the arguments as the caller's user knows them (the CLI passes its own).
    """
    unet_model, encoder_model, out = Path(unet_model), Path(encoder_model), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HandlesError(f"{names[2]}: expected a new or empty folder, got {out} (it exists; nothing was overwritten)")
    index_u, train_u = _read(unet_model, names[0])
    index_e, train_e = _read(encoder_model, names[1])
    check_same_decoder(unet_model, encoder_model, names[:2])
    hist_u, hist_e = list(train_u.get("history", [])), list(train_e.get("history", []))
    shared = 0
    while shared < min(len(hist_u), len(hist_e)) and hist_u[shared] == hist_e[shared]:
        shared += 1
    history = hist_u + hist_e[shared:]
    with atomic_output_dir(out) as tmp:  # complete or not at all
        shutil.copytree(unet_model, tmp, dirs_exist_ok=True)
        shutil.rmtree(tmp / "vae")
        shutil.copytree(encoder_model / "vae", tmp / "vae")
        index_u["vae"] = index_e["vae"]  # the VAE's class (a wider encoder is an AsymmetricAutoencoderKL)
        (tmp / "model_index.json").write_text(json.dumps(index_u, indent=2) + "\n")
        record = {**train_u, "history": history,
                  "cumulative_hours": cumulative_hours(history),
                  "joined": {"unet_from": str(unet_model), "vae_from": str(encoder_model)}}
        if "config" in train_e:
            record["encoder_config"] = train_e["config"]
        (tmp / "training.json").write_text(json.dumps(record, indent=1))
    return out
