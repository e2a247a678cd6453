"""Token grounding: an auxiliary training loss that ties each object's words to its pixels.

The miniature model binds colours and patterns to the wrong object in scenes with several
objects (MODEL_CARD.md, Limitations). TokenCompose (Wang et al., CVPR 2024, "TokenCompose:
Text-to-Image Diffusion with Token-level Supervision") adds to the denoising loss a term on the
UNet's cross-attention maps: the attention mass a token spends inside its object's mask should
be all of it. Per cross-attention layer, object ``k`` with word tokens ``T_k`` and mask ``M_k``:

    A_k(p) = mean over heads and t in T_k of softmax attention of pixel p to token t
    L_token = mean_k (1 - sum_p M_k(p) A_k(p) / sum_p A_k(p))^2

averaged over every cross-attention layer and every object that is visible. The
world knows exactly which words name which object (captions list objects left to right,
:meth:`Scene.caption`), so the supervision is exact: no segmenter, no parser.

Shapes: masks ``(B, K, s, s)`` in [0, 1] (area fractions), token positions ``(B, K, T)`` long,
``-1`` where an object or a word slot is absent.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from diffusion_handles.world.binding import cross_attention, phrase_tokens

MAX_OBJECTS = 3  # the world's scenes hold one to three objects
MAX_WORDS = 3  # colour, pattern, shape (the article is not an object's word)


def object_token_positions(scene_json: str, tokenizer, mirrored: bool = False) -> np.ndarray:
    """Token positions of each object's words in its scene's caption, ``(MAX_OBJECTS, MAX_WORDS)``.

    Row ``k`` is object ``k`` of the scene (the index its pixels carry in ``ids``); ``-1`` pads.
    ``mirrored`` gives the positions in the caption of the left-right mirrored image.
    """
    from diffusion_handles.world.scene import Scene

    scene = Scene.from_json(scene_json)
    order = scene.left_to_right()
    order = order[::-1] if mirrored else order  # the caption names the objects left to right
    out = np.full((MAX_OBJECTS, MAX_WORDS), -1, np.int64)
    for i, slots in enumerate(phrase_tokens(scene.caption(mirrored=mirrored), tokenizer)):
        slots = slots[:MAX_WORDS]
        out[order[i], : len(slots)] = slots
    return out


def object_masks(ids: np.ndarray, side: int) -> torch.Tensor:
    """Per-object area fractions at ``side x side``: ``ids (N, H, W)`` uint8 (255 background) to
    ``(N, MAX_OBJECTS, side, side)`` float16."""
    t = torch.from_numpy(np.asarray(ids)).long()
    out = []
    for i in range(0, len(t), 256):
        one = torch.stack([(t[i:i + 256] == k).float() for k in range(MAX_OBJECTS)], 1)  # (b, K, H, W)
        out.append(F.adaptive_avg_pool2d(one, side).half())
    return torch.cat(out)


class AttentionRecorder:
    """Cross-attention processor that also keeps its attention probabilities.

    Installed on every ``attn2`` of a diffusers ``UNet2DConditionModel`` by :meth:`install`;
    ``maps`` collects ``(B, heads, HW, L)`` tensors during a forward pass (cleared by the caller).
    It computes :func:`~diffusion_handles.world.binding.cross_attention` (no bias).
    """

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] = []
        self._replaced: dict = {}

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        b, n, _ = hidden_states.shape
        out, probs = cross_attention(attn, hidden_states, encoder_hidden_states)
        self.maps.append(probs.view(b, attn.heads, n, -1))
        return out

    def install(self, unet) -> None:
        procs = {}
        for name, proc in unet.attn_processors.items():
            procs[name] = self if ".attn2." in name else proc
            if ".attn2." in name:
                self._replaced[name] = proc
        unet.set_attn_processor(procs)

    def uninstall(self, unet) -> None:
        """Give the cross-attention layers back the processors :meth:`install` replaced."""
        unet.set_attn_processor({name: self._replaced.get(name, proc) for name, proc in unet.attn_processors.items()})
        self._replaced.clear()
        self.maps.clear()


def token_loss(maps: list[torch.Tensor], masks: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``L_token`` (module docstring) averaged over layers and present objects; scalar.

    ``maps``: ``(B, heads, s*s, L)`` per layer (square maps); ``masks (B, K, S, S)`` area
    fractions at the largest map side ``S`` (pooled down for smaller maps); ``tokens (B, K, T)``.
    """
    b, k, t = tokens.shape
    present = (tokens[..., 0] >= 0) & (masks.flatten(2).sum(-1) > 0)  # (B, K): named and visible
    if not present.any():
        return masks.new_zeros(())
    losses = []
    for m in maps:
        s = int(round(m.shape[2] ** 0.5))
        a = m.mean(1)  # (B, s*s, L)
        idx = tokens.clamp(min=0).view(b, 1, k * t).expand(-1, a.shape[1], -1)
        per_tok = a.gather(2, idx).view(b, -1, k, t)  # (B, s*s, K, T)
        w = (tokens >= 0).float().view(b, 1, k, t)
        a_obj = (per_tok * w).sum(-1) / w.sum(-1).clamp(min=1)  # (B, s*s, K)
        mk = F.adaptive_avg_pool2d(masks.float(), s).flatten(2).transpose(1, 2)  # (B, s*s, K)
        inside = (a_obj * mk).sum(1) / a_obj.sum(1).clamp(min=1e-8)  # (B, K)
        losses.append(((1 - inside) ** 2)[present])
    return torch.cat(losses).mean()
