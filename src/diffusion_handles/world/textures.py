"""Procedural texture bitmaps for TinyWorld (linear RGB float32 arrays ``(H, W, 3)``)."""

from __future__ import annotations

import numpy as np

from diffusion_handles.world.scene import COLOURS, WALLS


def srgb_to_linear(c) -> np.ndarray:
    c = np.asarray(c, dtype=np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(c) -> np.ndarray:
    c = np.clip(np.asarray(c, dtype=np.float32), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(c, 1 / 2.4) - 0.055).astype(np.float32)


def _secondary(colour: str) -> np.ndarray:
    """The second colour of a pattern: near-white, or dark grey for light main colours."""
    return np.array((0.15, 0.15, 0.17) if colour in ("white", "yellow") else (0.95, 0.95, 0.93), np.float32)


def object_texture(colour: str, pattern: str, size: int = 64) -> np.ndarray:
    """Texture of an object in UV space (u along columns, v along rows), linear RGB."""
    main = np.array(COLOURS[colour], np.float32)
    second = _secondary(colour)
    v, u = (np.mgrid[0:size, 0:size] + 0.5) / size  # (H, W) each in [0, 1]
    if pattern == "solid":
        sel = np.zeros((size, size), bool)
    elif pattern == "checkered":
        sel = ((np.floor(u * 6) + np.floor(v * 3)) % 2) == 1
    elif pattern == "striped":
        sel = (np.floor(v * 6) % 2) == 1
    elif pattern == "dotted":
        cu, cv = (u * 6) % 1.0 - 0.5, (v * 3) % 1.0 - 0.5
        sel = cu * cu + cv * cv < 0.3**2
    else:
        raise ValueError(f"pattern: expected one of solid/checkered/striped/dotted, got {pattern!r}")
    img = np.where(sel[..., None], second, main)
    return srgb_to_linear(img)


def floor_texture(name: str, size: int = 128, seed: int = 0) -> tuple[np.ndarray, float]:
    """``(texture, repeats)``: a floor bitmap and how many times it tiles over the floor's UV."""
    rng = np.random.default_rng(seed)
    v, u = (np.mgrid[0:size, 0:size] + 0.5) / size
    noise = rng.normal(0, 1, (size // 8, size // 8)).repeat(8, 0).repeat(8, 1)
    if name == "wooden":
        plank = np.floor(u * 4)
        grain = 0.5 + 0.5 * np.sin(v * 60 + plank * 7 + 3 * np.sin(u * 25))
        base = np.array((0.55, 0.35, 0.18)) * (0.85 + 0.15 * grain)[..., None]
        base *= (0.9 + 0.1 * ((plank % 2) == 0))[..., None]
        edge = ((u * 4) % 1.0) < 0.04
        img, reps = np.where(edge[..., None], base * 0.55, base), 12.0
    elif name == "tiled":
        sel = ((np.floor(u * 2) + np.floor(v * 2)) % 2) == 1
        img = np.where(sel[..., None], np.array((0.85, 0.85, 0.82)), np.array((0.35, 0.35, 0.38)))
        reps = 10.0
    elif name == "grey":
        img, reps = np.ones((size, size, 3)) * np.array((0.5, 0.5, 0.5)) * (1 + 0.03 * noise)[..., None], 8.0
    elif name == "sandy":
        img, reps = np.ones((size, size, 3)) * np.array((0.82, 0.70, 0.48)) * (1 + 0.06 * noise)[..., None], 8.0
    elif name == "grassy":
        img, reps = np.ones((size, size, 3)) * np.array((0.28, 0.55, 0.18)) * (1 + 0.12 * noise)[..., None], 8.0
    else:
        raise ValueError(f"floor: unknown floor {name!r}")
    return srgb_to_linear(np.clip(img, 0, 1)), reps


def wall_colour(name: str) -> np.ndarray:
    return srgb_to_linear(WALLS[name])
