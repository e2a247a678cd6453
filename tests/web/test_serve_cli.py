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
        (["--allow-host", "evil.example/path"], "--allow-host"),
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
        assert r.status_code == 200 and r.json()["model"] == tiny_model.name  # its name, not its path
        assert str(tiny_model) not in r.text
        assert r.json()["render_unavailable"] is None
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["info"]["title"] == "Diffusion Handles"
        assert httpx.get(f"http://localhost:{port}/api/info").status_code == 200
        # the served address only: another name (DNS rebinding) or another port is refused
        for host in ("attacker.example", f"attacker.example:{port}", f"127.0.0.1:{port + 1}"):
            r = httpx.get(f"http://127.0.0.1:{port}/api/info", headers={"host": host})
            assert r.status_code == 400 and "Host" in r.json()["detail"], host
        r = httpx.post(f"http://127.0.0.1:{port}/api/sessions/scene", json={"scene": "demo"},
                       headers={"origin": f"http://localhost:{port + 1}"})
        assert r.status_code == 403 and "Origin" in r.json()["detail"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert f"http://127.0.0.1:{port}/" in out


def test_served_hosts_are_the_address_and_loopback_at_the_port():
    from diffusion_handles.cli.serve import served_hosts

    assert served_hosts("127.0.0.1", 7860, []) == ("127.0.0.1:7860", "localhost:7860", "[::1]:7860")
    assert served_hosts("::1", 80, ["Box.Local", "fe80::1", "10.0.0.2:9000"]) == (
        "127.0.0.1:80", "localhost:80", "[::1]:80", "box.local:80", "[fe80::1]:80", "10.0.0.2:9000")
    assert "0.0.0.0:7860" not in served_hosts("0.0.0.0", 7860, [])
