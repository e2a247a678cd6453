"""``handles serve``: argument checks, and the documented command really serves the app."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest

from diffusion_handles.cli import main


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--port", "0"], "--port"),
        (["--threads", "0"], "--threads"),
        (["--max-upload-mb", "-1"], "--max-upload-mb"),
        (["--steps", "0"], "--steps"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, needle, capsys):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("handles serve: error:") and needle in err and "\n" not in err


def test_serve_starts_on_loopback_and_answers(tiny_model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "diffusion_handles", "serve", "--port", str(port), "--model", str(tiny_model)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"handles serve did not answer: {proc.stdout.read() if proc.poll() is not None else 'timeout'}")
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["model"] == str(tiny_model)
        assert r.json()["render_unavailable"] is None
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["info"]["title"] == "Diffusion Handles"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert f"http://127.0.0.1:{port}/" in out
