"""Which perception tools the page may offer (their weights are present or downloadable)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from diffusion_handles.web.perception import Perception


def looks_like_folder(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source or Path(source).expanduser().exists()


def weights_present(source: str) -> bool:
    """Whether the weights of ``source`` (a local folder or a hub id) are on this machine: the
    folder, or the hub cache's snapshot, holds ``config.json`` and a non-empty weight file."""
    def has_weights(folder: Path) -> bool:
        return (folder / "config.json").is_file() and any(
            f.is_file() and f.stat().st_size > 0 for pat in ("*.safetensors", "*.bin") for f in folder.glob(pat))

    if looks_like_folder(source):
        folder = Path(source).expanduser()
        return folder.is_dir() and has_weights(folder)
    try:
        from huggingface_hub import snapshot_download

        return has_weights(Path(snapshot_download(source, local_files_only=True)))
    except Exception:
        return False


class ToolAvailability:
    """Which perception tools the page may offer: the perception layer is installed and the
    model's weights are on this machine, or (a hub id) can be downloaded now: offline mode off
    and the hub reachable. The answer is kept for a minute (one hub probe a minute at most).

    ``click`` needs SAM; ``text`` needs SAM and the text detector; ``depth`` the depth estimator.
    """

    TTL_S = 60.0

    def __init__(self, perception: Perception):
        self.perception = perception
        self._lock = threading.Lock()
        self._cached: tuple[float, tuple[str, ...], dict[str, bool]] | None = None

    def capabilities(self) -> dict[str, bool]:
        from diffusion_handles.hub import hub_reachable, is_offline

        installed = self.perception.capabilities()
        if not any(installed.values()):
            return {"click": False, "text": False, "depth": False}
        env = tuple(os.environ.get(v, "") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_HOME"))
        with self._lock:
            if self._cached is not None and self._cached[1] == env and time.monotonic() - self._cached[0] < self.TTL_S:
                return dict(self._cached[2])
        from diffusion_handles import perception as p

        models = self.perception.models
        sources = {"sam": models.get("sam_model", p.DEFAULT_SAM_MODEL),
                   "detector": models.get("detector_model", p.DEFAULT_DETECTOR_MODEL),
                   "depth": models.get("depth_model", p.DEFAULT_DEPTH_MODEL)}
        ok = {k: weights_present(v) for k, v in sources.items()}
        missing_hub_ids = [k for k, v in ok.items() if not v and not looks_like_folder(sources[k])]
        if missing_hub_ids and not is_offline() and hub_reachable(timeout_s=1.0):
            ok.update(dict.fromkeys(missing_hub_ids, True))
        caps = {"click": bool(installed.get("click")) and ok["sam"],
                "text": bool(installed.get("text")) and ok["sam"] and ok["detector"],
                "depth": bool(installed.get("depth")) and ok["depth"]}
        with self._lock:
            self._cached = (time.monotonic(), env, caps)
        return dict(caps)
