"""TinyWorld: an offline miniature world and the embedded depth-to-image model.

* :mod:`.scene` procedural scenes (JSON), :mod:`.render` Mitsuba 3 renderer (RGB, z-depth,
  masks), :mod:`.dataset` rendered training sets, :mod:`.model` / :mod:`.train` the miniature
  SD2-depth-style model, :mod:`.evaluate` quality against ground-truth renders.
* :func:`model_path` resolves the model name ``"tinyworld"`` to the folder shipped inside the
  package (diffusers layout), so the backbone loads it exactly like a hub model.

This module imports nothing heavy; import the sub-modules for the work.
"""

from __future__ import annotations

from pathlib import Path

from diffusion_handles.errors import HandlesError

MODEL_NAME = "tinyworld"
_MODEL_DIR = Path(__file__).resolve().parent / "model"


def model_path() -> Path:
    """The shipped TinyWorld model folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``)."""
    if not (_MODEL_DIR / "model_index.json").is_file():
        raise HandlesError(f"--model: the embedded {MODEL_NAME!r} model is missing from this installation (expected {_MODEL_DIR})")
    return _MODEL_DIR


__all__ = ["MODEL_NAME", "model_path"]
