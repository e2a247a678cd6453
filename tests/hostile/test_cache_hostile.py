"""The inversion cache cannot lie: every corruption of an entry is caught, reported, rebuilt.

Each case corrupts the one entry a first inversion wrote, in a way of its own, then inverts the
same inputs again: the bad entry must be reported in one line on stderr, deleted and rebuilt
(``cache_hit`` false, results equal to a fresh inversion), and the rebuilt entry must be used
by the next call.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_handles.cli import main
from diffusion_handles.diffusion.backbone import Backbone
from diffusion_handles.diffusion.config import InversionConfig
from diffusion_handles.diffusion.inverted import (
    TENSOR_FILE,
    CacheEntryError,
    InvertedImage,
    tensor_checksum,
)
from diffusion_handles.diffusion.random_models import (
    build_backbone_components,
    save_model_folder,
    tiny_configs,
)
from diffusion_handles.errors import HandlesError
from diffusion_handles.pipeline import DiffusionHandles

S = 16
CFG = InversionConfig(method="null-text", num_steps=3, null_inner_steps=2)


@pytest.fixture(scope="module")
def handles():
    parts = build_backbone_components(tiny_configs(), seed=0)
    return DiffusionHandles(Backbone(parts, model_id="tiny")).set_progress_bar_config(disable=True)


def _scene():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, S, S, generator=g)
    depth = torch.full((1, 1, S, S), 3.0)
    mask = torch.zeros(1, 1, S, S)
    depth[..., 4:12, 4:12], mask[..., 4:12, 4:12] = 2.0, 1.0
    return image, depth, mask


def _invert(handles, cache):
    image, depth, mask = _scene()
    handles.cache_dir = None if cache is None else Path(cache)  # the facade's inversion cache
    return handles.invert(image, "a box", depth, mask, inversion=CFG)


@pytest.fixture(scope="module")
def reference(handles):
    return _invert(handles, None)


def _entry(cache: Path) -> Path:
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    return entry


def _rewrite(entry: Path, change) -> None:
    """Load the entry's tensors and meta unverified, let ``change(tensors, meta)`` alter them, and
    write them back well-formed (the checksum is *not* updated unless ``change`` does it)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(entry / TENSOR_FILE))
    meta = json.loads((entry / "meta.json").read_text())
    change(tensors, meta)
    save_file(tensors, str(entry / TENSOR_FILE))
    (entry / "meta.json").write_text(json.dumps(meta))


def _truncate(entry):
    data = (entry / TENSOR_FILE).read_bytes()
    (entry / TENSOR_FILE).write_bytes(data[: len(data) // 2])


def _garble_meta(entry):
    (entry / "meta.json").write_text("{not json")


def _drop_meta_key(entry):
    meta = json.loads((entry / "meta.json").read_text())
    del meta["record_plan"]
    (entry / "meta.json").write_text(json.dumps(meta))


def _flip_bytes(entry):
    data = bytearray((entry / TENSOR_FILE).read_bytes())
    for i in range(len(data) - 64, len(data) - 32):  # inside the tensor data, past the header
        data[i] ^= 0x5A
    (entry / TENSOR_FILE).write_bytes(bytes(data))


def _wrong_shape_resummed(entry):
    def change(t, meta):
        t["x_T"] = torch.zeros(1, 4, 3, 3)
        meta["checksum"] = tensor_checksum(t)  # a consistent checksum: the shape check must catch it
    _rewrite(entry, change)


def _nan_resummed(entry):
    def change(t, meta):
        t["x_T"] = torch.full_like(t["x_T"], float("nan"))
        meta["checksum"] = tensor_checksum(t)
    _rewrite(entry, change)


def _altered_well_formed(entry):
    def change(t, meta):
        t["x_T"] = t["x_T"] + 0.5  # plausible values, same shape and dtype
    _rewrite(entry, change)


def _missing_tensor(entry):
    def change(t, meta):
        del t["text_embedding"]
        meta["checksum"] = tensor_checksum(t)
    _rewrite(entry, change)


def _foreign_weights(entry):
    def change(t, meta):
        meta["weights_digest"] = "0" * 64
        meta["checksum"] = tensor_checksum(t)
    _rewrite(entry, change)


def _replaced_by_file(entry):
    import shutil

    shutil.rmtree(entry)
    entry.write_text("not a folder")


def _int_tensor(entry):
    def change(t, meta):
        t["mask"] = t["mask"].to(torch.int64)
        meta["checksum"] = tensor_checksum(t)
    _rewrite(entry, change)


CORRUPTIONS = {
    "truncated tensors": (_truncate, "could not read"),
    "garbled meta": (_garble_meta, "could not read"),
    "missing meta key": (_drop_meta_key, "malformed"),
    "flipped bytes": (_flip_bytes, "checksum"),
    "wrong shape": (_wrong_shape_resummed, "x_T"),
    "NaN values": (_nan_resummed, "non-finite"),
    "altered tensors": (_altered_well_formed, "checksum"),
    "missing tensor": (_missing_tensor, "malformed"),
    "other weights": (_foreign_weights, "other model weights"),
    "file instead of folder": (_replaced_by_file, "expected tensors.safetensors"),
    "integer tensor": (_int_tensor, "floating-point"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_bad_entry_is_reported_deleted_and_rebuilt(case, handles, reference, tmp_path, capsys):
    corrupt, reason = CORRUPTIONS[case]
    first = _invert(handles, tmp_path)
    entry = _entry(tmp_path)
    capsys.readouterr()
    corrupt(entry)
    with pytest.raises(CacheEntryError, match=reason):
        InvertedImage.load(entry, key=entry.name, weights_digest=handles.backbone.weights_digest)

    again = _invert(handles, tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inversion cache" in err[0] and reason in err[0], err
    assert not again.cache_hit and again.key == first.key
    assert torch.equal(again.x_T, reference.x_T) and torch.equal(again.null_embeddings, reference.null_embeddings)

    third = _invert(handles, tmp_path)  # the rebuilt entry verifies and is used
    assert third.cache_hit and torch.equal(third.x_T, reference.x_T)
    assert capsys.readouterr().err == ""
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]  # no staging leftovers


def test_key_covers_the_weights_not_just_the_name(handles, tmp_path):
    """A model retrained in place (same id, other weights) must not reuse old inversions."""
    first = _invert(handles, tmp_path)
    retrained = DiffusionHandles(Backbone(build_backbone_components(tiny_configs(), seed=1), model_id="tiny"))
    assert retrained.backbone.weights_digest != handles.backbone.weights_digest
    other = _invert(retrained, tmp_path)
    assert not other.cache_hit and other.key != first.key
    same = DiffusionHandles(Backbone(build_backbone_components(tiny_configs(), seed=0), model_id="tiny"))
    assert same.backbone.weights_digest == handles.backbone.weights_digest
    assert _invert(same, tmp_path).cache_hit  # identical weights rebuilt in another process-like object


def test_interrupted_write_leaves_no_entry(handles, tmp_path, monkeypatch):
    import safetensors.torch

    def dies(tensors, path, *a, **k):
        Path(path).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies)
    with pytest.raises(KeyboardInterrupt):
        _invert(handles, tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the entry nor its staging folder


def test_edit_refuses_an_unusable_inverted_image(handles, reference):
    from diffusion_handles.geometry.transform import HandleEdit

    # an inverted image assembled by hand (not verified by invert or load) with a NaN latent
    fields = {**reference.__dict__, "x_T": torch.full_like(reference.x_T, float("nan")), "verified": False}
    bad = InvertedImage(**fields)
    with pytest.raises(HandlesError, match="x_T: holds non-finite"):
        handles.edit(bad, HandleEdit((0.1, 0.0, 0.0)))


def test_cli_edit_rebuilds_a_corrupt_cache_entry(tmp_path, capsys):
    """Through ``handles edit --cache``: exit 0, one line about the bad entry, the same result as
    without a cache (not an all-black image, not a transform error)."""
    model = save_model_folder(build_backbone_components(tiny_configs(), seed=0), tmp_path / "model")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((S, S, 3)) * 255).astype(np.uint8)).save(tmp_path / "image.png")
    depth = np.full((S, S), 3.0, np.float32)
    depth[4:12, 4:12] = 2.0
    np.save(tmp_path / "depth.npy", depth)
    mask = np.zeros((S, S), np.uint8)
    mask[4:12, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    cache = tmp_path / "cache"

    def run(out):
        return main(["edit", str(tmp_path / "image.png"), "--prompt", "a box", "--depth", str(tmp_path / "depth.npy"),
                     "--mask", str(tmp_path / "mask.png"), "--model", str(model), "--steps", "3",
                     "--inversion", "negative-prompt", "--translate", "0.2", "0", "0", "--quiet",
                     "--cache", str(cache), "--out", str(tmp_path / out)])

    assert run("a") == 0
    _flip_bytes(_entry(cache))
    capsys.readouterr()
    assert run("b") == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "inversion cache" in err[0] and "checksum" in err[0], err
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["inversion"]["cache_hit"] is False
    a = np.asarray(Image.open(tmp_path / "a" / "edited.png"))
    b = np.asarray(Image.open(tmp_path / "b" / "edited.png"))
    assert np.array_equal(a, b)
