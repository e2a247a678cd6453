"""Layout-bound cross-attention: each object's words act only where the depth puts that object.

The miniature model binds colours and patterns to the wrong object in scenes with several
objects (a caption's first object painted on its right-hand neighbour, MODEL_CARD.md). When the
model generates from a depth map and a caption, both already say where each object is: the
world's captions list the objects left to right (:meth:`~diffusion_handles.world.scene.Scene.caption`),
and the depth shows where each object stands in front of the floor and the wall. So, without
training, the cross-attention of the conditional branch gets an additive bias on its logits
(Dense Diffusion, Kim et al., ICCV 2023, modulates the same logits by a layout; here the layout
comes from the depth and the bias is constant over steps):

    logit(p, t) += alpha * R_k(p) - beta * (1 - R_k(p))    for every word t of object k

with ``R_k`` object ``k``'s region (its area fraction in each cell of the layer's map), so
object ``k``'s colour, pattern and shape words are drawn into its own pixels and kept out of the
others'. Every other token, and the unconditional branch, is left as the model computes it.

Only generation from a caption and a depth map uses it (``handles world eval`` and the
benchmarks under ``benchmarks/``); edits start from an inverted latent and are not touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

BETA = 5.0  # logit penalty for an object's words outside its region (tuned on seeds 2,000,000+)
ALPHA = 2.0  # logit bonus for an object's words inside its region (same)
FG_REL = 0.01  # foreground: inverse depth above the row's background by this share of its maximum
JUMP_REL = 0.03  # object boundaries: inverse-depth steps between neighbours above this share of its maximum
MIN_PIXELS = 12  # smaller depth components are not objects


@dataclass(frozen=True)
class Binding:
    """Strengths of the bias (module docstring); ``Binding()`` is the default."""

    beta: float = BETA
    alpha: float = ALPHA


def phrase_tokens(caption: str, tokenizer) -> list[list[int]]:
    """Token positions of each object's words, in the order the caption names the objects.

    ``caption``: a world caption, ``"a red dotted cube and a blue sphere on a grey floor by ..."``
    (objects joined by ``" and "`` before the first ``" on "``); position 0 is the start token and
    the article of each object is skipped. Returns ``[]`` for a caption without ``" on "``.
    """
    if " on " not in caption:
        return []

    def count(word: str) -> int:
        return len(tokenizer(word, add_special_tokens=False).input_ids)

    out, pos = [], 1  # after the start token
    for i, phrase in enumerate(caption.split(" on ")[0].split(" and ")):
        if i:
            pos += count("and")
        slots = []
        for j, word in enumerate(phrase.split(" ")):
            n = count(word)
            if j > 0:  # the article names no object
                slots.extend(range(pos, pos + n))
            pos += n
        out.append(slots)
    return out


def object_regions(depth: np.ndarray, k: int, jump_rel: float = JUMP_REL) -> np.ndarray | None:
    """The ``k`` objects' regions from a z-depth map, ordered left to right.

    Args:
        depth: ``(H, W)`` z-depth in scene units (positive).
        k: how many objects the caption names.
        jump_rel: the boundary threshold (``JUMP_REL``, below).

    Returns:
        ``(k, H, W)`` bool, region ``i`` the ``i``-th object from the left (by centroid), or
        ``None`` when the depth shows fewer than ``k`` objects.

    Assumes the world's cameras (no roll or yaw against the floor and the wall): the floor's and
    the wall's inverse depth is then constant along each image row, so a pixel belongs to an
    object when its inverse depth exceeds its row's minimum by ``FG_REL`` of the image's maximum.
    Objects are the ``k`` largest connected parts of that foreground once cut at inverse-depth
    steps above ``JUMP_REL`` of the maximum (where one object stands in front of another), grown back over the
    cut pixels. The regions match the rendered object masks with a mean IoU of 0.987 on every
    16th scene of seeds 5000-8199 (where ``JUMP_REL`` was chosen from 0.006, 0.012, 0.02, 0.03
    and 0.05) and 0.986 on the 64 tuning scenes (seeds 2,000,000+), none missing
    (``python benchmarks/region_agreement.py --data NPZ``).
    """
    from scipy import ndimage

    inv = 1.0 / np.maximum(np.asarray(depth, dtype=np.float64), 1e-6)
    fg = inv > inv.min(1, keepdims=True) + FG_REL * inv.max()
    gy, gx = np.gradient(inv)
    lab, n = ndimage.label(fg & (np.hypot(gx, gy) <= jump_rel * inv.max()))
    if n < k or k < 1:
        return None
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]  # pixels per part
    keep = [int(i) + 1 for i in np.argsort(-sizes, kind="stable")[:k] if sizes[i] >= MIN_PIXELS]
    if len(keep) < k:
        return None
    near = ndimage.distance_transform_edt(~np.isin(lab, keep), return_distances=False, return_indices=True)
    full = np.where(fg, lab[near[0], near[1]], 0)  # every foreground pixel to its nearest kept part
    xs = [float(np.nonzero(full == i)[1].mean()) for i in keep]
    return np.stack([full == keep[i] for i in np.argsort(xs, kind="stable")])


def layer_shape(n: int, hw: tuple[int, int]) -> tuple[int, int]:
    """The ``(h, w)`` of a UNet map with ``n`` cells at the latent grid ``hw``'s aspect ratio."""
    for f in (1, 2, 4, 8, 16, 32, 64):
        h, w = -(-hw[0] // f), -(-hw[1] // f)
        if h * w == n:
            return h, w
    raise ValueError(f"n: expected the cell count of a map of the latent grid {hw} down-sampled by a power of 2, got {n}")


def attention_bias(regions: torch.Tensor, tokens: list[list[int]], hw: tuple[int, int], length: int,
                   binding: Binding) -> torch.Tensor:
    """The additive logit bias ``(h * w, length)`` of one map.

    ``regions (K, H, W)`` float area fractions (or bool) in the caption's object order,
    ``tokens`` each object's token positions (:func:`phrase_tokens`), ``hw`` the map's size,
    ``length`` the text length.
    """
    r = F.adaptive_avg_pool2d(regions.float()[None], hw)[0].flatten(1)  # (K, h*w)
    words = torch.zeros(len(tokens), length)  # (K, L): 1 where token t is one of object k's words
    for k, slots in enumerate(tokens):
        words[k, [t for t in slots if t < length]] = 1.0
    return (binding.alpha * r - binding.beta * (1.0 - r)).T @ words


def cross_attention(attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                    bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What diffusers' ``AttnProcessor`` computes for a plain cross-attention (no residual inside
    the module, no group or spatial norm), with an optional additive logit ``bias (B * heads, HW, L)``.

    Returns the layer's output ``(B, HW, C)`` and its attention probabilities ``(B * heads, HW, L)``.
    """
    q = attn.head_to_batch_dim(attn.to_q(hidden_states))
    k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
    v = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
    probs = attn.get_attention_scores(q, k, bias)
    out = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, v))))
    return out / attn.rescale_output_factor, probs


class BoundAttention:
    """A cross-attention processor adding :func:`attention_bias` to the rows it is given.

    It computes :func:`cross_attention` with the bias on the logits of the batch rows ``rows``
    (the conditional branch), built once per map size. Use :func:`bound`.
    """

    def __init__(self, regions: torch.Tensor, tokens: list[list[int]], latent_hw: tuple[int, int],
                 rows: list[int], binding: Binding) -> None:
        self.regions, self.tokens, self.latent_hw = regions, tokens, latent_hw
        self.rows, self.binding = rows, binding
        self._cache: dict[tuple, torch.Tensor] = {}

    def _bias(self, b: int, n: int, length: int, heads: int, like: torch.Tensor) -> torch.Tensor:
        """``(B * heads, n, L)``, in the order ``head_to_batch_dim`` gives the rows."""
        key = (b, n, length, heads, like.dtype, like.device)
        if key not in self._cache:
            one = attention_bias(self.regions, self.tokens, layer_shape(n, self.latent_hw), length, self.binding)
            out = torch.zeros(b, n, length)
            out[self.rows] = one
            self._cache[key] = out.repeat_interleave(heads, 0).to(like)
        return self._cache[key]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        b, n, _ = hidden_states.shape
        bias = self._bias(b, n, encoder_hidden_states.shape[1], attn.heads, hidden_states)
        return cross_attention(attn, hidden_states, encoder_hidden_states, bias)[0]


@contextlib.contextmanager
def bound(unet, regions: torch.Tensor, tokens: list[list[int]], latent_hw: tuple[int, int], rows: list[int],
          binding: Binding | None = None) -> Iterator[BoundAttention]:
    """Inside the block every cross-attention of ``unet`` (a diffusers ``UNet2DConditionModel``)
    is a :class:`BoundAttention`; the processors it had are restored on the way out."""
    proc = BoundAttention(regions, tokens, latent_hw, rows, binding or Binding())
    before = dict(unet.attn_processors)
    unet.set_attn_processor({name: proc if ".attn2." in name else p for name, p in before.items()})
    try:
        yield proc
    finally:
        unet.set_attn_processor(before)
