"""Hostile 3DEditBench files (issue 37, items 4 and 8c).

A case file must not reach outside ``--data`` (external storage, external or soft links,
virtual datasets), nor make the reader allocate what its metadata declares beyond the limits
(a 20000x20000 ``image1`` that costs nothing on disk): each is refused from the metadata, before
any data is read, with one line naming the file and the dataset. And a file that cannot be read
counts as one failed case in the run's totals, whatever the number of methods.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from diffusion_handles.bench.editbench3d import EditBenchCase, opencv_K, read_case, write_case
from diffusion_handles.cli import main
from diffusion_handles.errors import HandlesError

H = W = 32


def _case() -> EditBenchCase:
    im = np.full((H, W, 3), 90, np.uint8)
    m = np.zeros((H, W), bool)
    m[8:20, 8:20] = True
    im[m] = (200, 40, 40)
    return EditBenchCase(name="c", image1=im, image2=im.copy(), K=opencv_K(55.0, H, W), R=np.eye(3),
                         T=np.array([0.1, 0.0, 0.0]), point_prompt=np.array([12.0, 12.0]), gt_segment=m)


def _write_with(tmp_path, name: str, key: str, make) -> object:
    """A valid case file whose ``key`` is replaced by what ``make(f)`` creates in it."""
    path = write_case(tmp_path / name, _case())
    with h5py.File(path, "a") as f:
        del f[key]
        make(f)
    return path


@pytest.fixture
def no_big_reads(monkeypatch):
    """Reading any dataset of more elements than an allowed image fails the test at once (and keeps
    today's reader from allocating gigabytes for a declared-huge dataset)."""
    real = h5py.Dataset.__getitem__

    def guarded(self, *args, **kw):
        assert self.size <= 4096 * 4096 * 3, f"read {self.name} of declared shape {self.shape}"
        return real(self, *args, **kw)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", guarded)


def _refused(path, *needles: str) -> str:
    with pytest.raises(HandlesError) as e:
        read_case(path)
    msg = str(e.value)
    assert "\n" not in msg and path.name in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def test_external_storage_links_and_virtual_datasets_are_refused(tmp_path, no_big_reads):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.bin"
    secret.write_bytes(bytes(range(256)) * (H * W * 3 // 256))
    other = write_case(outside / "other.hdf5", _case())
    data = tmp_path / "data"
    data.mkdir()

    p = _write_with(data, "ext.hdf5", "image1",
                    lambda f: f.create_dataset("image1", shape=(H, W, 3), dtype=np.uint8,
                                               external=[(str(secret), 0, H * W * 3)]))
    _refused(p, "image1", "external")

    p = _write_with(data, "extlink.hdf5", "image2", lambda f: f.__setitem__("image2", h5py.ExternalLink(str(other), "/image2")))
    _refused(p, "image2", "link")

    p = _write_with(data, "softlink.hdf5", "image2", lambda f: f.__setitem__("image2", h5py.SoftLink("/image1")))
    _refused(p, "image2", "link")

    def virtual(f):
        layout = h5py.VirtualLayout(shape=(H, W, 3), dtype=np.uint8)
        layout[:] = h5py.VirtualSource(str(other), "image1", shape=(H, W, 3))
        f.create_virtual_dataset("image1", layout)

    p = _write_with(data, "virtual.hdf5", "image1", virtual)
    _refused(p, "image1", "virtual")


def test_declared_huge_datasets_are_refused_before_reading(tmp_path, no_big_reads):
    # HDF5 allocates only the chunks written: these files are small on disk
    p = _write_with(tmp_path, "huge.hdf5", "image1",
                    lambda f: f.create_dataset("image1", shape=(20000, 20000, 3), dtype=np.uint8, chunks=True))
    assert p.stat().st_size < 1 << 20
    _refused(p, "image1", "20000x20000")
    p = _write_with(tmp_path, "hugemask.hdf5", "GT_segment",
                    lambda f: f.create_dataset("GT_segment", shape=(20000, 20000), dtype=bool, chunks=True))
    _refused(p, "GT_segment", "(20000, 20000)")
    p = _write_with(tmp_path, "hugekp.hdf5", "point_prompt",
                    lambda f: f.create_dataset("point_prompt", shape=(10**9,), dtype=np.float64, chunks=True))
    _refused(p, "point_prompt")
    p = _write_with(tmp_path, "wide.hdf5", "image1",
                    lambda f: f.create_dataset("image1", shape=(H, W, 3), dtype=np.dtype("V64")))
    _refused(p, "image1", "dtype")
    # a chunk far larger than the dataset (a compression bomb in one chunk): refused from the layout
    p = _write_with(tmp_path, "bigchunk.hdf5", "K",
                    lambda f: f.create_dataset("K", shape=(3, 3), maxshape=(None, None), chunks=(1500, 1500),
                                               dtype=np.float64, data=np.eye(3), compression="gzip"))
    _refused(p, "K", "chunk")


def test_an_unreadable_file_is_one_failed_case_whatever_the_methods(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "bad.hdf5").write_bytes(b"not hdf5 at all")
    out = tmp_path / "run"
    code = main(["bench", "--suite", "3deditbench", "--data", str(data), "--gt-mask", "--model", "tinyworld",
                 "--steps", "2", "--methods", "ours", "warp_only", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    res = json.loads((out / "results.json").read_text())
    assert res["cases"] == {"total": 1, "ok": 0, "failed": 1}, res.get("cases")
    assert res["failed"] == 1
    # no method (nor the references) counts the unreadable file again
    assert all(a["failed"] == 0 and a["ok"] == 0 for a in res["aggregate"].values()), res["aggregate"]
    assert "1 of 1 case(s) failed" in err and "bad.hdf5" in err, err
