"""Guidance energies of Sec. 5.2: G_o (Eq. 8) and G_b (Eq. 9), and G = G_o + G_b.

Both are written as *means* rather than sums (Eq. 8 divides by the mask area and the channel
count; Eq. 9 compares masked means, as the paper's text describes), so the weights ``w^o``,
``w^b`` mean the same at every resolution. Dividing each layer's terms by that layer's
activation variance (:func:`activation_scale`, the normalized guidance mode) makes them mean
the same for every layer width and activation scale too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

OBJECT_TERMS = ("local", "averaged", "appearance")  # Eq. 8; masked means (Sec. 6); Eq. 8 normalized (a restyle)


def object_energy(psi: torch.Tensor, psi_edited: torch.Tensor, mask_object: torch.Tensor) -> torch.Tensor:
    """Eq. 8 for one layer and step, unweighted: local L2 inside ``M'_o``.

    Args:
        psi: ``(B, C, h, w)`` activations ``Psi^e`` of the current denoising pass.
        psi_edited: ``(B, C, h, w)`` edited activations ``Psi' = W[rho(Psi), F]`` (Eq. 6).
        mask_object: ``(B, K, h, w)`` ``M'_o = W[M_o, F] * M_v`` in ``[0, 1]``, one channel per
            object (``K = 1``: the paper's single object; ``K > 1``: several objects edited in
            one pass, one Eq. 8 term per object, summed).

    Returns:
        scalar ``sum_k sum_u M'_o,k(u) mean_c (Psi^e - Psi')^2(u) / sum_u M'_o,k(u)`` (0 for an
        empty mask).
    """
    sq = (psi.float() - psi_edited.float()).pow(2).mean(dim=1, keepdim=True)  # (B, 1, h, w)
    m = mask_object.float()
    return ((m * sq).sum(dim=(0, 2, 3)) / m.sum(dim=(0, 2, 3)).clamp(min=1.0)).sum()


def _standardized(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, C, h, w)`` with each channel's mean and standard deviation over the mask ``m``
    ``(B, 1, h, w)`` (weights in [0, 1]) taken out."""
    area = m.sum(dim=(2, 3), keepdim=True).clamp(min=1.0)
    mean = (x * m).sum(dim=(2, 3), keepdim=True) / area
    var = ((x - mean).pow(2) * m).sum(dim=(2, 3), keepdim=True) / area
    return (x - mean) / (var + 1e-6).sqrt()


def appearance_energy(psi: torch.Tensor, psi_edited: torch.Tensor, mask_object: torch.Tensor,
                      unit: float = 1.0) -> torch.Tensor:
    """Eq. 8 on appearance-normalized activations (a restyle's object term, not in the paper).

    Inside each object's ``M'_o``, both ``Psi^e`` and ``Psi'`` have each channel's mean and
    standard deviation over that mask taken out (instance normalization, as AdaIN does before it
    puts another style's statistics in) before the local L2 of :func:`object_energy`. What a
    per-channel affine change of the features expresses (the object's colour, its overall
    brightness and contrast) is no longer pulled back to the old object's; where the features
    sit relative to each other inside the object (shape, pose, shading, the pattern's layout)
    still is. ``unit`` multiplies the result so it is in the activations' units (the plan passes
    the layer's activation variance, :func:`activation_scale`, so the normalized mode's divisor
    leaves the standardized distance).

    Args:
        psi, psi_edited: ``(B, C, h, w)`` as in :func:`object_energy`.
        mask_object: ``(B, K, h, w)`` ``M'_o`` in ``[0, 1]``, one channel per object.
        unit: a positive number (see above).

    Returns:
        scalar ``unit * sum_k sum_u M'_o,k(u) mean_c (z^e - z')^2(u) / sum_u M'_o,k(u)`` with
        ``z`` the activations standardized per channel over ``M'_o,k`` (0 for an empty mask).
    """
    total = psi.new_zeros((), dtype=torch.float32)
    for k in range(mask_object.shape[1]):
        m = mask_object[:, k : k + 1].float()
        if float(m.sum()) <= 0:
            continue
        total = total + object_energy(_standardized(psi.float(), m), _standardized(psi_edited.float(), m), m)
    return total * float(unit)


def background_energy(psi: torch.Tensor, psi_edited: torch.Tensor, mask_background: torch.Tensor) -> torch.Tensor:
    """Eq. 9 for one layer and step, unweighted: squared difference of masked means over ``M'_b``.

    Args:
        psi, psi_edited: ``(B, C, h, w)`` as in :func:`object_energy`.
        mask_background: ``(B, 1, h, w)`` ``M'_b`` in ``[0, 1]``.

    Returns:
        scalar ``mean_c (mean_{M'_b} Psi^e - mean_{M'_b} Psi')^2``.
    """
    m = mask_background.float()
    area = m.sum(dim=(2, 3)).clamp(min=1.0)  # (B, 1)
    mean_e = (psi.float() * m).sum(dim=(2, 3)) / area  # (B, C)
    mean_t = (psi_edited.float() * m).sum(dim=(2, 3)) / area
    return (mean_e - mean_t).pow(2).mean()


def activation_scale(psi: torch.Tensor) -> float:
    """Variance of activations ``psi`` ``(B, C, h, w)`` about their per-channel means, averaged
    over channels: the squared size of a typical activation difference in that layer."""
    x = psi.float()
    return float(x.var(dim=(0, 2, 3), unbiased=False).mean().clamp(min=1e-12))


def guidance_energy(
    activations: Mapping[int, torch.Tensor],
    edited: Mapping[int, torch.Tensor],
    masks: tuple[Mapping[int, torch.Tensor], Mapping[int, torch.Tensor]],
    layers: Sequence[int],
    weights: tuple[float, float],
    object_guidance: str = "local",
    scales: Mapping[int, float] | None = None,
    units: Mapping[int, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``G = sum_i (w^o G_o,i + w^b G_b,i) / s_i`` over the guided ``layers`` of one step (Sec. 5.2).

    ``scales[i]`` (default 1) divides layer ``i``'s terms (see :func:`activation_scale`).
    ``object_guidance="appearance"`` (a restyle) takes :func:`appearance_energy` as the object
    term, with ``units[i]`` (default 1) its unit.

    All mappings are keyed by up-block index. ``masks`` is ``(M'_o, M'_b)``, each at its layer's
    resolution (``M'_o`` may hold one channel per object); ``weights`` is ``(w^o, w^b)``.
    ``object_guidance="averaged"`` replaces Eq. 8's local L2 by a comparison of masked means
    over ``M'_o`` (the global, Self-Guidance-like term the paper contrasts with, Sec. 6).
    Returns ``(G, parts)`` with the float values of each term for logging.
    """
    if object_guidance not in OBJECT_TERMS:
        raise ValueError(f"object_guidance: expected one of {', '.join(OBJECT_TERMS)}, got {object_guidance!r}")
    object_term = object_energy if object_guidance == "local" else background_energy
    mask_object, mask_background = masks
    w_object, w_background = weights
    total = None
    parts: dict[str, float] = {}
    for i in layers:
        s = 1.0 if scales is None else float(scales.get(i, 1.0))
        m_o = mask_object[i]
        if object_guidance == "appearance":
            unit = 1.0 if units is None else float(units.get(i, 1.0))
            go = appearance_energy(activations[i], edited[i], m_o, unit) / s
        elif object_guidance == "local" or m_o.shape[1] == 1:
            go = object_term(activations[i], edited[i], m_o) / s
        else:  # averaged guidance, several objects: one masked-means term per object
            go = sum(object_term(activations[i], edited[i], m_o[:, k : k + 1]) for k in range(m_o.shape[1])) / s
        gb = background_energy(activations[i], edited[i], mask_background[i]) / s
        term = w_object * go + w_background * gb
        total = term if total is None else total + term
        parts[f"G_o[{i}]"] = float(go.detach())
        parts[f"G_b[{i}]"] = float(gb.detach())
    if total is None:
        raise ValueError("guidance_energy: expected at least one guided layer, got none")
    parts["G"] = float(total.detach())
    return total, parts
