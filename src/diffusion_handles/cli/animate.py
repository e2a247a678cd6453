"""``handles animate``: one inversion, one guided edit per frame along an interpolated trajectory."""

from __future__ import annotations

import argparse

from diffusion_handles.cli.common import SEED_MAX, add_out_args
from diffusion_handles.cli.edit import add_edit_input_args

DEFAULT_FRAMES = 12
DEFAULT_FPS = 8.0


def register(sub: argparse._SubParsersAction) -> None:
    from diffusion_handles.animation import MAX_FRAMES, MAX_KEYFRAMES
    from diffusion_handles.geometry.camera import DEFAULT_FOV_DEG

    p = sub.add_parser(
        "animate",
        help="animate an object (or the camera) along a 3D trajectory (keyframes): frames, MP4 and GIF",
        description="Invert IMAGE once, then make one guided edit per frame along the transform interpolated "
        "between keyframes (translation linear, rotation by slerp, scale geometric). Writes frames/0000.png..., "
        "animation.mp4 (H.264), animation.gif, comparison.png and summary.json.",
    )
    add_edit_input_args(p, prompt_help="text prompt describing the image",
                        mask_help="object mask PNG (pixels >= 128 are the object), or --object / --click")
    p.add_argument("--keyframes", default=None, metavar="FILE.json",
                   help=f"a JSON list of 1..{MAX_KEYFRAMES} transforms with the keys translate [x, y, z], rotate_axis "
                        "[x, y, z], rotate_deg, scale (a missing key is the identity), spread evenly over the frames")
    p.add_argument("--edits", default=None, metavar="FILE.json",
                   help='several objects, each on its own track (instead of --keyframes and --mask/--object/--click): '
                        'a JSON list of {"mask": PNG | "object": TEXT | "click": [X, Y], "keyframes": [transforms as '
                        "in --keyframes]} (relative paths relative to the file)")
    p.add_argument("--frames", default=str(DEFAULT_FRAMES), metavar="N",
                   help=f"number of frames, 2..{MAX_FRAMES} (default {DEFAULT_FRAMES}); the first and last are the "
                        "first and last keyframes")
    p.add_argument("--camera", action="store_true",
                   help="the keyframes move the camera instead of an object (as handles edit --camera): no "
                        "--mask/--object/--click, the whole scene is lifted and the disocclusions generated")
    p.add_argument("--fps", default=str(DEFAULT_FPS), metavar="F", help=f"frames per second of the MP4 and GIF (default {DEFAULT_FPS:g})")
    p.add_argument("--fov", metavar="DEG", default=str(DEFAULT_FOV_DEG),
                   help=f"horizontal field of view in degrees (default {DEFAULT_FOV_DEG:g}, Sec. 5.1)")
    p.add_argument("--model", default="stabilityai/stable-diffusion-2-depth", metavar="ID_OR_DIR",
                   help="hub id, local diffusers folder, or 'tinyworld' (default stabilityai/stable-diffusion-2-depth)")
    p.add_argument("--preset", default="default", choices=["default", "paper", "fast"],
                   help="method settings as in handles edit (default: default; fast: 20 steps, one gradient step)")
    p.add_argument("--steps", default=None, metavar="N", help="DDIM steps (default: the preset's)")
    p.add_argument("--seed", default="0", metavar="S", help=f"seed of the VAE posterior sample, in [0, {SEED_MAX}] (default 0)")
    p.add_argument("--device", default="cpu", metavar="cpu|cuda|cuda:N", help="torch device (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="model precision (default float32; half precision needs cuda)")
    p.add_argument("--cache", default=None, metavar="DIR", help="cache folder for the inverted image")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_out_args(p)
    p.set_defaults(func=run)


def _number(text: str, arg: str, lo: float, hi: float, integer: bool = False) -> float:
    from diffusion_handles.errors import HandlesError

    kind = "an integer" if integer else "a number"
    try:
        v = int(text) if integer else float(text)
    except (TypeError, ValueError):
        raise HandlesError(f"{arg}: expected {kind} in [{lo:g}, {hi:g}], got {text!r}") from None
    if not lo <= v <= hi:
        raise HandlesError(f"{arg}: expected {kind} in [{lo:g}, {hi:g}], got {text}")
    return v


def _read_keyframes(path: str) -> object:
    """The parsed JSON of ``--keyframes`` (checked by :func:`~diffusion_handles.animation.keyframes_from_json`)."""
    import json

    from diffusion_handles.errors import HandlesError

    try:
        return json.loads(open(path, encoding="utf-8").read())
    except OSError as e:
        raise HandlesError(f"--keyframes: could not read {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HandlesError(f"--keyframes: expected a JSON list of transforms, got unreadable JSON ({e})") from None


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    import time

    import numpy as np
    import torch
    from PIL import Image

    from diffusion_handles.animation import (
        MAX_FRAMES,
        display_frames,
        interpolate_keyframes,
        keyframes_from_json,
        run_frames,
        write_gif,
        write_mp4,
    )
    from diffusion_handles.cli.common import (
        check_device,
        check_out,
        fov_from_args,
        parse_seed,
        silence_progress_bars,
    )
    from diffusion_handles.cli.edit import SMALL_UNET_PARAMS, load_edit_inputs
    from diffusion_handles.diffusion.config import preset
    from diffusion_handles.errors import HandlesError
    from diffusion_handles.io import save_image
    from diffusion_handles.outputs import atomic_output_dir
    from diffusion_handles.pipeline import DiffusionHandles
    from diffusion_handles.viz import side_by_side

    t_start = time.perf_counter()
    check_out(args)
    n_frames = int(_number(args.frames, "--frames", 2, MAX_FRAMES, integer=True))
    fps = _number(args.fps, "--fps", 0.5, 60)
    fov = fov_from_args(args)
    steps = None if args.steps is None else int(_number(args.steps, "--steps", 1, 1000, integer=True))
    inversion, guidance = preset(args.preset, steps)
    seed = parse_seed(args.seed)
    if not args.prompt.strip():
        raise HandlesError("--prompt: expected a text describing the image, got an empty string")
    from diffusion_handles.cli.edit_modes import check_mode_args, parse_edits_file

    if (args.keyframes is None) == (args.edits is None):
        raise HandlesError("--keyframes: expected either --keyframes (one object or the camera) or --edits (several "
                           f"objects), got {'both' if args.keyframes else 'neither'}")
    mode = check_mode_args(args)  # "object", "camera" or "multi" (--edits)
    entries, object_masks = None, None
    if mode == "multi":
        entries = parse_edits_file(args.edits, keyframes=True)
        tracks = [interpolate_keyframes(e.keyframes, n_frames) for e in entries]
        edits = [[t[i] for t in tracks] for i in range(n_frames)]  # per frame, one edit per object
    else:
        edits = interpolate_keyframes(keyframes_from_json(_read_keyframes(args.keyframes)), n_frames)
    check_device(args.device)
    if args.quiet:
        silence_progress_bars()
    if mode == "camera":
        from diffusion_handles.cli.edit_modes import load_camera_inputs

        image, depth, mask, _ = load_camera_inputs(args)
        background = None
    elif mode == "multi":
        from diffusion_handles.cli.edit_modes import load_multi_inputs

        image, depth, object_masks, mask, background, _ = load_multi_inputs(args, entries, "animate")
    else:
        image, depth, mask, background, prepared = load_edit_inputs(args, "animate")

    dh = DiffusionHandles.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    if sum(p.numel() for p in dh.backbone.unet.parameters()) < SMALL_UNET_PARAMS:
        torch.set_num_threads(1)  # small models: one thread is fastest (see handles edit)
    t_load = time.perf_counter() - t_start
    t0 = time.perf_counter()
    inv = dh.invert(image, args.prompt, depth, mask, inversion=inversion, guidance=guidance, seed=seed,
                    cache_dir=args.cache, progress=not args.quiet)
    t_invert = time.perf_counter() - t0

    records: list[dict] = []

    def frame(i: int, e) -> np.ndarray:
        t = time.perf_counter()
        out = dh.edit(inv, e, guidance=guidance, background_depth=background, fov_deg=fov, source_image=image,
                      camera=args.camera, object_masks=object_masks, progress=False)
        done = {"edits": [x.to_dict() for x in e]} if mode == "multi" else {"edit": e.to_dict()}
        records.append({"frame": i, **done, "seconds": time.perf_counter() - t})
        return (out.edited[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()

    def report(ev: dict) -> None:
        if not args.quiet:
            print(f"handles animate: frame {ev['step']} of {ev['total']}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    frames = run_frames(frame, edits, report)
    t_frames = time.perf_counter() - t0
    shown = display_frames(frames)
    picks = sorted({round(i * (n_frames - 1) / 4) for i in range(5)})
    summary = {
        "command": "animate",
        "inputs": {"image": str(args.image), "depth": str(args.depth), "mask": str(args.mask),
                   "keyframes": str(args.keyframes), "edits": str(args.edits), "prompt": args.prompt,
                   "size_hw": list(inv.input_hw)},
        "model": {"id": dh.backbone.model_id, "device": str(dh.backbone.device)},
        "moves": {"camera": "camera", "multi": "objects", "object": "object"}[mode],
        "config": {"preset": args.preset, "inversion": inv.config.to_dict(), "guidance": guidance.to_dict(),
                   "seed": seed, "fov_deg": fov, "frames": n_frames, "fps": fps},
        "interpolation": "translation linear, rotation slerp (angle interpolated about a shared axis), scale geometric",
        **({"objects": [e.to_json() for e in entries]} if mode == "multi" else {}),
        "frames": records,
        "inversion": {"cache_hit": inv.cache_hit, "key": inv.key},
        "timings_s": {"load": t_load, "inversion": t_invert, "frames": t_frames,
                      "per_frame": t_frames / n_frames},
    }
    with atomic_output_dir(args.out) as tmp:
        (tmp / "frames").mkdir()
        for i, f in enumerate(frames):
            Image.fromarray(f).save(tmp / "frames" / f"{i:04d}.png")
        write_mp4(shown, tmp / "animation.mp4", fps)
        write_gif(shown, tmp / "animation.gif", fps)
        save_image(tmp / "comparison.png", side_by_side(
            [("input", image)] + [(f"frame {i}", torch.from_numpy(frames[i]).permute(2, 0, 1)[None].float() / 255)
                                  for i in picks]))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"animation written to {args.out}: {n_frames} frames in {t_frames:.1f} s "
          f"({t_frames / n_frames:.2f} s per frame, inversion {t_invert:.1f} s): frames/, animation.mp4, "
          "animation.gif, comparison.png, summary.json")
    return 0
