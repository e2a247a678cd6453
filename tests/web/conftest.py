"""Fixtures of the web app tests: a tiny random diffusion model, an in-process client, a live
uvicorn server and headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

``HANDLES_WEB_STATIC=/some/folder`` serves the page from that folder instead of the package's
``web/static`` (e.g. an older copy of the page, to check that a new browser test fails on it).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
SCENE_SIZE = (48, 64)  # small built-in scenes keep previews and tiny-model renders fast


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised SD2-depth-layout model (diffusers folder) built in code."""
    from diffusion_handles.diffusion.random_models import (
        build_backbone_components,
        save_model_folder,
        tiny_configs,
    )

    return save_model_folder(build_backbone_components(tiny_configs(), seed=0), tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def web_config(tiny_model, tmp_path_factory):
    from diffusion_handles.web.app import WebConfig

    # TestClient sends "Host: testserver": the in-process tests name it explicitly (the app's
    # default answers only the loopback names)
    return WebConfig(model=str(tiny_model), default_steps=3, scene_size=SCENE_SIZE,
                     results_dir=tmp_path_factory.mktemp("web-results"), allowed_hosts=("testserver",))


@pytest.fixture
def client(web_config):
    from fastapi.testclient import TestClient

    from diffusion_handles.web.app import create_app

    with TestClient(create_app(web_config)) as c:
        yield c


@pytest.fixture
def demo_session(client) -> dict:
    r = client.post("/api/sessions/scene", json={"scene": "demo"})
    assert r.status_code == 201, r.text
    return r.json()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(web_config):
    """The app served by uvicorn on a free loopback port, in a background thread."""
    import uvicorn

    from diffusion_handles.web import app as app_module
    from diffusion_handles.web.app import create_app

    static = app_module.STATIC
    if os.environ.get("HANDLES_WEB_STATIC"):
        app_module.STATIC = Path(os.environ["HANDLES_WEB_STATIC"])
    port = _free_port()
    cfg = dataclasses.replace(web_config, allowed_hosts=(f"127.0.0.1:{port}",))  # as ``handles serve`` does
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            pytest.fail("the web app did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    app_module.STATIC = static


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package (pip install playwright)")
    sync_playwright = sync_api.sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, live_server):
    """A fresh page on the live app; JavaScript errors fail the test."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1400, "height": 950})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(live_server + "/")
    pg.wait_for_selector('body[data-ready="1"]', timeout=30000)
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors in the page: {errors}"
