"""``handles serve``: the local web app (3D gizmo, instant preview, full render with progress)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="start the local web app",
        description="Serve the web app: open an image or a built-in scene, select the object, move it with a 3D "
        "gizmo while the instant preview follows, then render with a live progress bar. The JSON API is described "
        "at /openapi.json. The server answers only requests addressed to it (the Host header: 127.0.0.1, localhost, [::1] "
        "or --host, at --port; add names with --allow-host) and refuses writes from other sites' pages.",
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another name clients may use to reach the server (the Host header), e.g. this machine's "
                   "network name with --host 0.0.0.0; repeatable. Requests naming any other host get 400")
    p.add_argument("--model", default="tinyworld",
                   help="diffusion model for renders: hub id, local diffusers folder, or 'tinyworld' (default)")
    p.add_argument("--device", default="cpu", help="torch device for renders (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="model dtype (default float32)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="default DDIM steps of a render (default: the pipeline's, 50 as in the paper)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="torch CPU threads (default 1: keeps the preview responsive on a shared CPU)")
    p.add_argument("--inversion-cache", type=int, default=2, metavar="N",
                   help="inverted images kept in memory, so re-rendering the same image skips the inversion (default 2; 0 disables)")
    p.add_argument("--sam-model", default=None, help="SAM for click/text selection: hub id or local folder (default: the perception layer's)")
    p.add_argument("--detector-model", default=None, help="zero-shot detector for text queries: hub id or local folder")
    p.add_argument("--depth-model", default=None, help="depth estimator for uploads without a depth map: hub id or local folder")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload per file (default 10)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diffusion_handles.errors import HandlesError

    if not 0 < args.port < 65536:
        raise HandlesError(f"--port: expected 1..65535, got {args.port}")
    if args.threads < 1:
        raise HandlesError(f"--threads: expected >= 1, got {args.threads}")
    if not 0 < args.max_upload_mb <= 1024:
        raise HandlesError(f"--max-upload-mb: expected a number in (0, 1024], got {args.max_upload_mb}")
    if args.inversion_cache < 0:
        raise HandlesError(f"--inversion-cache: expected >= 0, got {args.inversion_cache}")
    if args.steps is not None and not 1 <= args.steps <= 200:
        raise HandlesError(f"--steps: expected 1..200, got {args.steps}")

    allowed = served_hosts(args.host, args.port, args.allow_host)

    import torch
    import uvicorn

    from diffusion_handles.web.app import WebConfig, create_app
    from diffusion_handles.web.uploads import UploadLimits

    torch.set_num_threads(args.threads)
    cfg = WebConfig(model=args.model, device=args.device, dtype=args.dtype, default_steps=args.steps,
                    inversion_cache=args.inversion_cache,
                    limits=UploadLimits(max_bytes=int(args.max_upload_mb * 1024 * 1024)),
                    perception_models=tuple((k, v) for k, v in (("sam_model", args.sam_model),
                                                                ("detector_model", args.detector_model),
                                                                ("depth_model", args.depth_model)) if v),
                    allowed_hosts=allowed)
    app = create_app(cfg)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"handles serve: http://{shown}:{args.port}/  (API: /openapi.json; Ctrl+C stops)", flush=True)
    if args.host in ("0.0.0.0", "::", ""):
        print(f"handles serve: answering requests addressed to {', '.join(allowed)}; add names with --allow-host", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def served_hosts(host: str, port: int, extra: list[str]) -> tuple[str, ...]:
    """The ``Host`` header values the server answers: the loopback names and ``host`` at
    ``port``, plus ``extra`` names (at ``port`` unless they give one); a wildcard bind
    (0.0.0.0, ::) adds this machine's host name."""
    import socket

    from diffusion_handles.errors import HandlesError

    def bracket(name: str) -> str:
        return f"[{name}]" if ":" in name and not name.startswith("[") else name

    names = ["127.0.0.1", "localhost", "[::1]"]
    if host in ("0.0.0.0", "::", ""):
        names.append(socket.gethostname())
    else:
        names.append(bracket(host))
    out = [f"{n.lower()}:{port}" for n in names]
    for e in extra:
        e = e.strip()
        if not e or any(c in e for c in "/@?# "):
            raise HandlesError(f"--allow-host: expected a host name or address such as myhost.local or 192.168.1.5, got {e!r}")
        e = bracket(e) if e.count(":") > 1 else e
        out.append(e.lower() if e.rsplit(":", 1)[-1].isdigit() and not e.endswith("]") else f"{e.lower()}:{port}")
    return tuple(dict.fromkeys(out))
