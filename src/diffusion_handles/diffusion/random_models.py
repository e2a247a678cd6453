"""Randomly initialised backbones built from configs in code (tests, benchmarks; no download).

* :func:`sd2_depth_configs` writes out the architecture of ``stabilityai/stable-diffusion-2-depth``
  (UNet 865.9 M parameters, VAE, OpenCLIP-H text encoder with 23 layers, scheduler), so timings
  and memory can be measured without its weights (they do not depend on the weight values).
* :func:`tiny_configs` is the same layout shrunk to a two-block UNet with ``in_channels = 5``.
* :func:`build_backbone_components` instantiates either; :func:`save_model_folder` writes the
  usual diffusers layout (``unet/ vae/ text_encoder/ tokenizer/ scheduler/ model_index.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def sd2_depth_configs() -> dict[str, dict]:
    """Component configs of Stable Diffusion 2 depth (values of its released config files)."""
    unet = {
        "sample_size": 64, "in_channels": 5, "out_channels": 4, "center_input_sample": False,
        "flip_sin_to_cos": True, "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "downsample_padding": 1,
        "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
        "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True,
        "dual_cross_attention": False, "upcast_attention": False,
    }
    vae = {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 512,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "act_fn": "silu",
        "norm_num_groups": 32, "scaling_factor": 0.18215,
    }
    text = {
        "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
        "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu",
        "layer_norm_eps": 1e-5, "projection_dim": 512, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
    }
    scheduler = {
        "_class_name": "PNDMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "set_alpha_to_one": False, "skip_prk_steps": True,
        "steps_offset": 1, "prediction_type": "epsilon",
    }
    return {"unet": unet, "vae": vae, "text_encoder": text, "scheduler": scheduler, "max_length": 77}


def tiny_configs() -> dict[str, dict]:
    """The SD2-depth layout shrunk for CPU tests: two-block UNet (in_channels 5), 2x VAE."""
    unet = {
        "sample_size": 16, "in_channels": 5, "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8,
        "cross_attention_dim": 32, "attention_head_dim": [2, 4], "use_linear_projection": True,
    }
    vae = {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 32,
        "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
        "block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8, "scaling_factor": 0.18215,
    }
    text = {
        "vocab_size": 1000, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 16, "hidden_act": "gelu",
        "layer_norm_eps": 1e-5, "projection_dim": 32, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
    }
    scheduler = dict(sd2_depth_configs()["scheduler"])
    return {"unet": unet, "vae": vae, "text_encoder": text, "scheduler": scheduler, "max_length": 16}


def byte_level_vocab() -> tuple[dict[str, int], list[str]]:
    """A minimal CLIP byte-level BPE vocabulary (every byte, with and without ``</w>``), no merges."""
    # GPT-2/CLIP byte-level alphabet: printable Latin-1 bytes map to themselves, the other
    # bytes to code points from 256 upwards, in byte order.
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("\u00a1"), ord("\u00ac") + 1)) | set(range(ord("\u00ae"), 256))
    extra = iter(range(256, 512))
    chars = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    tokens = ["<|startoftext|>", "!PAD", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    return {t: i for i, t in enumerate(tokens)}, []


def make_tokenizer(max_length: int):
    from transformers import CLIPTokenizer

    vocab, merges = byte_level_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, pad_token="!PAD")


def build_backbone_components(configs: dict, seed: int = 0) -> dict:
    """Instantiate ``unet, vae, text_encoder, tokenizer, scheduler`` with random weights (seeded)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**configs["unet"])
    vae = AutoencoderKL(**configs["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    sched_cfg = {k: v for k, v in configs["scheduler"].items() if not k.startswith("_")}
    scheduler = PNDMScheduler(**sched_cfg)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder,
            "tokenizer": make_tokenizer(configs["max_length"]), "scheduler": scheduler}


def save_model_folder(components: dict, path: str | Path) -> Path:
    """Write components in the diffusers pipeline layout (loadable by ``Backbone.from_pretrained``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        components[name].save_pretrained(path / name)
    index = {
        "_class_name": "StableDiffusionDepth2ImgPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", type(components["scheduler"]).__name__],
    }
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path
