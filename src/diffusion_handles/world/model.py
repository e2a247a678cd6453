"""The miniature depth-to-image model: diffusers' own classes, SD2-depth layout, tiny sizes.

* ``vae``: :class:`diffusers.AutoencoderKL`, 3 levels (downsampling factor 4), 8 latent
  channels: 128x128 images <-> 32x32x8 latents (v2; v1 had 64x64 images and 4 channels, and
  its round trip stopped near 26 dB). :func:`widen_encoder` turns it into a
  :class:`diffusers.AsymmetricAutoencoderKL` with a wider encoder and the same latents.
* ``unet``: :class:`diffusers.UNet2DConditionModel` with ``in_channels = 4 latent + 1 depth``
  (the depth channel is SD2-depth's: relative inverse depth normalised to [-1, 1] at latent
  resolution, :func:`diffusion_handles.diffusion.conditioning.depth_to_condition`), 3 levels,
  cross-attention on the two lower levels, epsilon prediction.
* ``text_encoder`` / ``tokenizer``: :class:`transformers.CLIPTextModel` (tiny) and a
  :class:`transformers.CLIPTokenizer` whose BPE vocabulary holds every caption word as one token.
* ``scheduler``: :class:`diffusers.DDIMScheduler` with SD2's noise schedule
  (scaled-linear betas 0.00085 to 0.012, 1000 steps).
"""

from __future__ import annotations

import json
from pathlib import Path

from diffusion_handles.world.scene import CAPTION_WORDS

MAX_TOKENS = 32  # captions have at most ~24 words; CLIP adds <|startoftext|>, <|endoftext|>
LATENT_CHANNELS = 8
IMAGE_SIZE = 128  # images are IMAGE_SIZE x IMAGE_SIZE; latents IMAGE_SIZE / 4
UNET_CHANNELS = (48, 96, 96)  # block_out_channels of the CPU-trained UNet
PRIOR_FILE = "leak_prior.safetensors"  # a leak prior (world.leak_prior) in the model folder, beside unet/ vae/ ...


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte -> printable-unicode table (GPT-2 BPE convention)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _bpe(word: tuple[str, ...], ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    while len(word) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(word[:-1], word[1:], strict=True))]
        r, i = min(pairs)
        if r == 1 << 30:
            break
        a, b = word[i], word[i + 1]
        out, j = [], 0
        while j < len(word):
            if j < len(word) - 1 and word[j] == a and word[j + 1] == b:
                out.append(a + b)
                j += 2
            else:
                out.append(word[j])
                j += 1
        word = tuple(out)
    return word


def build_tokenizer_files(folder: str | Path, words=CAPTION_WORDS) -> None:
    """Write ``vocab.json`` + ``merges.txt`` (+ configs) of a CLIP BPE over ``words``.

    The vocabulary has every byte symbol (with and without the end-of-word marker, as CLIP's),
    every intermediate merge, and each word as a single token; merges are generated so that
    every word in ``words`` encodes to exactly one token.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab: list[str] = symbols + [s + "</w>" for s in symbols]
    ranks: dict[tuple[str, str], int] = {}
    merges: list[tuple[str, str]] = []
    for w in words:
        while True:
            parts = _bpe(tuple(w[:-1]) + (w[-1] + "</w>",), ranks)
            if len(parts) == 1:
                break
            pair = (parts[0], parts[1])  # merge left to right
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in vocab:
                vocab.append(pair[0] + pair[1])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_TOKENS, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "errors": "replace"}))


# The text encoder's word-embedding table, one row per token id (transformers 5 names it so;
# older releases prefix it with "text_model.", which token_embedding_key also finds).
TOKEN_EMBEDDING = "embeddings.token_embedding.weight"


def token_embedding_key(state: dict) -> str:
    """The name of the word-embedding table in a text encoder's ``state`` (see :data:`TOKEN_EMBEDDING`)."""
    return next(k for k in state if k == TOKEN_EMBEDDING or k.endswith("." + TOKEN_EMBEDDING))


def remap_token_embedding(state: dict, old_vocab: dict[str, int], new_vocab: dict[str, int], fresh) -> tuple[dict, int]:
    """``state`` (a text encoder's tensors) with its word-embedding rows moved to ``new_vocab``'s ids.

    A vocabulary built from more caption words numbers its tokens afresh, so a warm start copies
    rows by token string, not by id. ``old_vocab`` / ``new_vocab``: token -> id of the warm start's
    and the new tokenizer; ``fresh`` ``(len(new_vocab), hidden)``: the rows of tokens the warm start
    lacks (a new model's initialisation). Returns the new state and how many rows were copied.
    """
    key = token_embedding_key(state)
    old = state[key]
    rows = fresh.detach().clone().to(old.dtype)
    copied = 0
    for token, i in new_vocab.items():
        j = old_vocab.get(token)
        if j is not None and j < len(old):
            rows[i] = old[j]
            copied += 1
    return {**state, key: rows}, copied


def load_tokenizer(folder: str | Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


def build_components(tokenizer, seed: int = 0, image_size: int = IMAGE_SIZE,
                     unet_channels: tuple[int, int, int] = UNET_CHANNELS,
                     latent_channels: int = LATENT_CHANNELS, unet_dropout: float = 0.0,
                     encoder_width: int = 1) -> dict:
    """Fresh (randomly initialised, seeded) vae, unet, text_encoder and scheduler.

    ``image_size`` is the native image side (latents are ``image_size / 4``), ``unet_channels``
    the UNet's three ``block_out_channels``, ``unet_dropout`` the dropout of its residual
    blocks (training only: ``eval()`` turns it off), ``encoder_width`` the VAE encoder's
    channels over the decoder's (1: an ``AutoencoderKL``; 2: the ``AsymmetricAutoencoderKL``
    of :func:`widen_encoder`).
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16, sample_size=image_size,
        mid_block_add_attention=False,
        scaling_factor=1.0,  # replaced by 1 / std of the training latents after VAE training
    )
    if encoder_width > 1:
        vae = widen_encoder(vae, encoder_width, seed=seed)
    text_cfg = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=MAX_TOKENS, projection_dim=64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_act="gelu",
    )
    text_encoder = CLIPTextModel(text_cfg)
    unet = UNet2DConditionModel(
        sample_size=image_size // 4, in_channels=latent_channels + 1, out_channels=latent_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=tuple(unet_channels), layers_per_block=1, cross_attention_dim=64,
        attention_head_dim=8, norm_num_groups=16, dropout=unet_dropout,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "scheduler": scheduler}


def widen_encoder(vae, factor: int = 2, noise: float = 1e-3, seed: int = 0):
    """A copy of ``vae`` whose encoder is ``factor`` times wider, computing the same function.

    The result is a :class:`diffusers.AsymmetricAutoencoderKL` (the diffusers class whose encoder
    and decoder have their own ``*_block_out_channels``): encoder channels x ``factor``, the
    decoder, ``quant_conv`` and ``post_quant_conv`` copied unchanged, the latents the same. The
    widening is Net2WiderNet's (Chen et al., ICLR 2016): every encoder channel becomes ``factor``
    adjacent copies and every weight reading a widened input is divided by ``factor``. Adjacent
    copies keep each GroupNorm group's mean and variance (a group of ``factor * m`` channels
    holds ``factor`` copies of the ``m`` old ones), so the encoder's output is unchanged up to
    the symmetry-breaking noise (``noise`` times each widened convolution's weight std; the
    copies would otherwise learn identically). That class always has a self-attention block in
    the middle of its encoder and decoder; both start as the identity (output projection zero).
    Its unused inpainting branch (``decoder.condition_encoder``) keeps its random weights.

    Args:
        vae: an :class:`diffusers.AutoencoderKL`. An asymmetric one is refused: its trained
            mid-block attention would be reset, so its latents would change.
        factor: integer >= 2.
    """
    import torch
    from diffusers import AsymmetricAutoencoderKL

    if int(factor) != factor or factor < 2:
        raise ValueError(f"factor: expected an integer >= 2, got {factor!r}")
    if isinstance(vae, AsymmetricAutoencoderKL):
        raise ValueError("vae: expected an AutoencoderKL to widen, got an AsymmetricAutoencoderKL (already widened; "
                         "widening it again would reset its encoder's attention and change its latents)")
    c = vae.config
    down = tuple(c.get("down_block_out_channels") or c.block_out_channels)
    up = tuple(c.get("up_block_out_channels") or c.block_out_channels)
    layers = int(c.get("layers_per_block") or c.get("layers_per_down_block"))
    new = AsymmetricAutoencoderKL(
        in_channels=c.in_channels, out_channels=c.out_channels, down_block_types=tuple(c.down_block_types),
        down_block_out_channels=tuple(factor * ch for ch in down), layers_per_down_block=layers,
        up_block_types=tuple(c.up_block_types), up_block_out_channels=up,
        layers_per_up_block=int(c.get("layers_per_block") or c.get("layers_per_up_block")),
        act_fn=c.act_fn, latent_channels=c.latent_channels, norm_num_groups=c.norm_num_groups,
        sample_size=c.sample_size, scaling_factor=c.scaling_factor,
    )
    old, own = vae.state_dict(), new.state_dict()
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, target in own.items():
        if ".attentions." in key and ".to_out." in key:
            state[key] = torch.zeros_like(target)  # new attention blocks start as the identity
            continue
        if key not in old:
            state[key] = target  # attention projections before to_out, the inpainting branch
            continue
        w = old[key]
        for d in range(w.dim()):
            if target.shape[d] == factor * w.shape[d] and key.startswith("encoder."):
                w = w.repeat_interleave(factor, dim=d)
                if d == 1:  # a convolution reading widened channels: the copies share its weight
                    w = w / factor
        if w.shape != target.shape:
            raise ValueError(f"vae: cannot widen {key}: {tuple(old[key].shape)} -> {tuple(target.shape)}")
        if key.startswith("encoder.") and w.dim() == 4 and noise > 0:
            w = w + noise * w.std() * torch.randn(w.shape, generator=gen)
        state[key] = w
    new.load_state_dict(state)
    return new.eval()


def component_tensors(folder: str | Path, name: str) -> dict:
    """Every tensor of ``folder/name`` (``vae``, ``unet``, ...): one safetensors file or its
    shards, read as data (no pickled code), on the CPU."""
    from safetensors.torch import load_file

    state = {}
    for f in sorted((Path(folder) / name).glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


# Steps of latent refinement after the encoder (diffusion.backbone.refine_latent) that TinyWorld
# models ask for in their settings file. On the 32 held-out scenes of the model card (seeds
# 1,000,000-031, model version 2.5's encoder) the round trip goes 33.60 -> 35.00 dB, worst scene
# 26.29 -> 28.66, scenes below 30 dB 4 -> 1; 40 steps add 0.03 dB (`python benchmarks/vae_gap.py
# --n 32 --steps S --lr 5e-2 --anchor 0.05`; docs/releases/tinyworld-v2.6.md).
ENCODE_REFINE_STEPS = 20


def cumulative_hours(history: list[dict]) -> float:
    """The hours of every training run in a ``training.json`` ``history`` (entries without ``hours``: 0)."""
    return round(sum(h.get("hours") or 0.0 for h in history), 3)


def save_model(folder: str | Path, *, vae, unet, text_encoder, tokenizer, scheduler,
               max_shard_size: str = "16MB", encode_refine_steps: int = ENCODE_REFINE_STEPS) -> Path:
    """Save in diffusers layout (safetensors) with a ``model_index.json``, and this project's
    settings file (``handles.json``: ``encode_refine_steps``, read by ``Backbone.from_pretrained``).

    Weight files larger than ``max_shard_size`` are split into shards with an index file (the
    layout ``from_pretrained`` reads), so no single file exceeds it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True, max_shard_size=max_shard_size)
    if type(vae).__name__ == "AsymmetricAutoencoderKL":
        # diffusers' class registers these two for pipelines' sake but its constructor does not take
        # them, so from_pretrained would warn on every load; it registers them again when loading
        cfg_path = folder / "vae" / "config.json"
        cfg = json.loads(cfg_path.read_text())
        for key in ("block_out_channels", "force_upcast"):
            cfg.pop(key, None)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    unet.save_pretrained(folder / "unet", safe_serialization=True, max_shard_size=max_shard_size)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(folder / "tokenizer")
    scheduler.save_pretrained(folder / "scheduler")
    import diffusers

    index = {
        "_class_name": "StableDiffusionDepth2ImgPipeline",
        "_diffusers_version": diffusers.__version__,
        "vae": ["diffusers", type(vae).__name__],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "depth_estimator": [None, None],
        "feature_extractor": [None, None],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    from diffusion_handles.diffusion.backbone import SETTINGS_FILE

    (folder / SETTINGS_FILE).write_text(json.dumps({"encode_refine_steps": int(encode_refine_steps)}) + "\n")
    return folder


def extend_vocabulary(model: str | Path, out: str | Path, seed: int = 0) -> dict:
    """A copy of the model folder ``model`` whose tokenizer knows every word of the world's captions now.

    For a model trained before the captions gained words (model version 2.8's light words):
    the tokenizer is rebuilt from :data:`~diffusion_handles.world.scene.CAPTION_WORDS`, the text
    encoder keeps every row of its word embeddings under the new ids (:func:`remap_token_embedding`)
    and starts the new tokens' rows as a new model would (N(0, 0.02), seeded); the UNet and VAE
    are copied untouched. A leak prior in ``model`` is left out (its text features change; fit
    one with ``handles world leak-prior``). ``out`` is written whole or not at all. Returns what
    changed: ``{"words_added", "rows_copied", "rows_new"}``, also appended to ``training.json``'s history.
    """
    import datetime
    import shutil

    import torch
    from transformers import CLIPTextModel

    from diffusion_handles.errors import HandlesError
    from diffusion_handles.outputs import atomic_output_dir

    model = Path(model)
    old_tok = load_tokenizer(model / "tokenizer")
    old_vocab = old_tok.get_vocab()
    added = [w for w in CAPTION_WORDS if len(old_tok(w, add_special_tokens=False).input_ids) != 1]
    if not added:
        raise HandlesError(f"--model: {model} already knows every caption word (nothing to add)")
    with atomic_output_dir(out) as tmp:
        shutil.copytree(model, tmp, dirs_exist_ok=True)
        (tmp / PRIOR_FILE).unlink(missing_ok=True)
        shutil.rmtree(tmp / "tokenizer")
        build_tokenizer_files(tmp / "tokenizer_build")
        tokenizer = load_tokenizer(tmp / "tokenizer_build")
        shutil.rmtree(tmp / "tokenizer_build")
        tokenizer.save_pretrained(tmp / "tokenizer")
        old_te = CLIPTextModel.from_pretrained(str(model / "text_encoder"))
        cfg = old_te.config
        cfg.vocab_size = len(tokenizer)
        cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        te = CLIPTextModel(cfg)
        torch.manual_seed(seed)
        fresh = torch.randn(len(tokenizer), cfg.hidden_size) * 0.02  # CLIP's initializer_range
        state, copied = remap_token_embedding(old_te.state_dict(), old_vocab, tokenizer.get_vocab(), fresh)
        te.load_state_dict(state, strict=True)
        shutil.rmtree(tmp / "text_encoder")
        te.save_pretrained(str(tmp / "text_encoder"))
        change = {"words_added": added, "rows_copied": copied, "rows_new": len(tokenizer) - copied}
        log = tmp / "training.json"
        if log.is_file():
            info = json.loads(log.read_text())
            info["history"] = [*info.get("history", []), {
                "date": datetime.date.today().isoformat(), "stages": {"vocabulary": change}, "hours": 0.0,
                "note": f"tokenizer extended to the world's caption words (handles world extend-vocab, seed {seed}); "
                        "UNet and VAE unchanged"}]
            info["cumulative_hours"] = cumulative_hours(info["history"])
            log.write_text(json.dumps(info, indent=2))
    return change
