"""Offline behaviour: missing weights fail at once, with one line naming the model and the options.

Determinism instead of timing: every test forbids network connections (any attempt fails the
test), so "fast" means "no network attempt and no retry loop", whatever the machine's speed.
"""

from __future__ import annotations

import socket

import pytest

from diffusion_handles import hub
from diffusion_handles.cli import main
from diffusion_handles.errors import HandlesError
from diffusion_handles.perception.depth import DepthConfig, DepthEstimator
from diffusion_handles.perception.segment import SamSegmenter, SegmentConfig, TextDetector

MISSING = "nobody-here/not-a-cached-model"


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_offline_env_is_read_at_call_time(monkeypatch):
    assert not hub.is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    assert hub.is_offline()


def test_hf_hub_offline_uncached_id_fails_with_one_line(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HandlesError) as e:
        DepthEstimator.load(DepthConfig(model=MISSING))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("--depth-model:") and repr(MISSING) in msg and "HF_HUB_OFFLINE" in msg
    assert "local folder" in msg and "--depth FILE" in msg


@pytest.mark.parametrize(
    "load, option, bypass",
    [(lambda: TextDetector.load(SegmentConfig(detector_model=MISSING)), "--detector-model", "--click X,Y or --mask FILE"),
     (lambda: SamSegmenter.load(SegmentConfig(sam_model=MISSING)), "--sam-model", "--mask FILE")],
)
def test_every_model_names_its_option_and_bypass(monkeypatch, no_network, load, option, bypass):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HandlesError, match=option) as e:
        load()
    assert repr(MISSING) in str(e.value) and bypass in str(e.value)


def test_unreachable_hub_is_probed_once_and_never_downloaded(monkeypatch, no_network):
    calls = []

    def load(name, local_only):
        calls.append((name, local_only))
        raise OSError("not in cache")

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout_s=hub.HUB_PROBE_TIMEOUT_S: False)
    with pytest.raises(HandlesError, match=r"not in the local cache and huggingface.co is unreachable"):
        hub.load_pretrained(load, MISSING, what="depth", option="--depth-model", bypass="give --depth FILE")
    assert calls == [(MISSING, True)]  # the cache only; no download attempt


def test_reachable_hub_downloads_after_a_cache_miss(monkeypatch, no_network):
    calls = []

    def load(name, local_only):
        calls.append(local_only)
        if local_only:
            raise OSError("not in cache")
        return "model"

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout_s=hub.HUB_PROBE_TIMEOUT_S: True)
    assert hub.load_pretrained(load, MISSING, what="depth", option="--depth-model") == "model"
    assert calls == [True, False]


def test_hub_probe_is_a_single_connection(monkeypatch):
    attempts = []

    def refuse(address, timeout=None):
        attempts.append((address, timeout))
        raise ConnectionRefusedError

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert hub.hub_reachable() is False
    assert attempts == [(("127.0.0.1", 9), hub.HUB_PROBE_TIMEOUT_S)]


def test_folders_are_checked(tmp_path, no_network):
    with pytest.raises(HandlesError, match="no such folder"):
        DepthEstimator.load(DepthConfig(model=str(tmp_path / "missing" / "model")))
    with pytest.raises(HandlesError, match=r"^--depth-model: expected a transformers depth estimation model folder "
                                           r".*got an empty folder"):
        DepthEstimator.load(DepthConfig(model=str(tmp_path)))  # exists, but holds no model


def test_cli_offline_exits_2_with_one_line_and_writes_nothing(monkeypatch, no_network, tmp_path, capsys, photo):
    from diffusion_handles.io import save_image

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    img = tmp_path / "photo.png"
    save_image(img, photo)
    out = tmp_path / "out"
    assert main(["depth", str(img), "--out", str(out), "--depth-model", MISSING]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("handles depth: error: --depth-model:") and MISSING in err
    assert main(["segment", str(img), "--object", "a mug", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "google/owlv2-base-patch16-ensemble" in err and "--mask FILE" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]


def test_a_cached_model_of_the_wrong_kind_is_one_line(no_network):
    def load(name, local_only):
        raise ValueError("Unrecognized configuration class <Owlv2Config> for AutoModelForDepthEstimation.\nmore")

    with pytest.raises(HandlesError, match=r"^--depth-model: could not load a depth model 'a/b' from the local cache: "
                                           r"Unrecognized configuration class <Owlv2Config>[^\n]*$"):
        hub.load_pretrained(load, "a/b", what="depth", option="--depth-model")


def test_a_folder_with_the_wrong_model_family_is_one_line(tiny_models, no_network):
    with pytest.raises(HandlesError, match=r"^--depth-model: expected a transformers depth estimation model folder "
                                           r"[^\n]*got a model of type 'owlv2' in .*owlv2$"):
        DepthEstimator.load(DepthConfig(model=tiny_models["owlv2"]))
