"""Helpers shared by the web tests: PNG bytes, data-URL pixels, waiting for a job."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
from PIL import Image


def png_bytes(arr: np.ndarray) -> bytes:
    """``(H, W[, 3])`` uint8 array -> PNG file bytes (an upload body)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def data_url_pixels(url: str) -> np.ndarray:
    """A ``data:image/png;base64,...`` URL -> ``(H, W, 3)`` int RGB pixels."""
    assert url.startswith("data:image/png;base64,"), url[:80]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)


def preview_pixels(page) -> np.ndarray:
    """The page's server preview image (``#preview-img``) as ``(H, W, 3)`` int RGB pixels."""
    return data_url_pixels(page.eval_on_selector("#preview-img", "e => e.src"))


def wait_job(client, jid: str, timeout: float = 120.0) -> dict:
    """Poll ``/api/jobs/{jid}`` until it is done, failed or cancelled; its last status."""
    deadline, st = time.time() + timeout, None
    while time.time() < deadline:
        st = client.get(f"/api/jobs/{jid}").json()
        if st["state"] in ("done", "error", "cancelled"):
            return st
        time.sleep(0.05)
    raise AssertionError(f"job {jid} did not finish in {timeout} s: {st}")
