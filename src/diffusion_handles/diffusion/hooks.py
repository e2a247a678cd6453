"""Reading decoder activations ``Psi_{i,t}`` with forward hooks (Sec. 5).

Hooks are installed on ``unet.up_blocks[i]`` inside a context manager and always removed, so
the model is left exactly as it was; no diffusers source is copied or patched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch


class ActivationCapture:
    """What one ``with capture_activations(...)`` block saw.

    ``outputs[i]`` is the output of ``up_blocks[i]`` from the most recent UNet call,
    ``(B, C_i, h_i, w_i)``, kept in the autograd graph unless ``detach`` was asked for.
    ``calls[i]`` counts how many times the block ran inside the block.
    """

    def __init__(self, layers: Sequence[int], detach: bool, batch_slice: slice | None) -> None:
        self.layers = tuple(layers)
        self.detach = detach
        self.batch_slice = batch_slice
        self.outputs: dict[int, torch.Tensor] = {}
        self.calls: dict[int, int] = {i: 0 for i in self.layers}

    def _hook(self, index: int):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            if self.batch_slice is not None:
                out = out[self.batch_slice]
            self.outputs[index] = out.detach() if self.detach else out
            self.calls[index] += 1

        return hook


@contextlib.contextmanager
def capture_activations(
    unet: torch.nn.Module,
    layers: Sequence[int],
    *,
    detach: bool = False,
    batch_slice: slice | None = None,
) -> Iterator[ActivationCapture]:
    """Record the outputs of ``unet.up_blocks[i]`` for ``i`` in ``layers``.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (anything with ``up_blocks``).
        layers: up-block indices; may be empty (then nothing is installed).
        detach: store detached tensors (recording) or keep the graph (guidance).
        batch_slice: keep only this part of the batch (e.g. the text-conditioned half of a
            classifier-free-guidance batch).

    Yields:
        an :class:`ActivationCapture`; hooks are removed on exit, also on error.
    """
    n = len(unet.up_blocks)
    bad = [i for i in layers if not 0 <= i < n]
    if bad:
        raise ValueError(f"layers: expected up-block indices in [0, {n}), got {list(layers)}")
    cap = ActivationCapture(layers, detach, batch_slice)
    handles = []
    try:
        for i in cap.layers:
            handles.append(unet.up_blocks[i].register_forward_hook(cap._hook(i)))
        yield cap
    finally:
        for h in handles:
            h.remove()
