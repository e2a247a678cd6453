"""``handles world``: render TinyWorld scenes, build the training set, train and evaluate the model.

    handles world render --seed N [--object K | --camera] [transform flags] --out DIR
    handles world dataset --out FILE.npz [--seeds A:B] [--workers 2]
    handles world pack IN.npz [IN2.npz ...] OUT.npz [--jpeg-quality Q]
    handles world train [--data FILE.npz] [--run-dir DIR] [--max-minutes M] [--export DIR]
    handles world export --run-dir DIR --out DIR
    handles world eval [--model tinyworld] [--n 32] --out DIR
    handles world compare BASE CANDIDATE [--json FILE]
    handles world bundle-renderer (--wheels DIR | --installed) --out FILE.tar.xz
"""

from __future__ import annotations

import argparse

from diffusion_handles.cli.common import (
    add_out_args,
    add_transform_args,
    check_out,
    edit_from_args,
    fov_from_args,
)
from diffusion_handles.errors import HandlesError


def register(subparsers) -> None:
    p = subparsers.add_parser("world", help="the offline miniature world: render scenes, train and evaluate the model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="world_command", required=True, parser_class=type(p))
    _register_render(sub)
    _register_dataset(sub)
    _register_pack(sub)
    _register_train(sub)
    _register_export(sub)
    _register_eval(sub)
    _register_leak_prior(sub)
    _register_extend_vocab(sub)
    _register_compare(sub)
    _register_join(sub)
    _register_bundle_renderer(sub)
    _register_export_3deditbench(sub)


def _register_render(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("render", help="render one scene (optionally with an object or the camera moved)")
    r.add_argument("--seed", type=int, default=None, help="scene seed (default 0 unless --scene is given)")
    r.add_argument("--scene", default=None, help="render this scene.json instead of a seed's scene")
    r.add_argument("--object", type=int, default=None, metavar="K", help="index of the object to transform (as in mask_K.png)")
    r.add_argument("--camera", action="store_true", help="apply the transform to the camera instead of an object")
    r.add_argument("--size", type=int, default=128, help="image width and height in pixels (default 128, the world's native size)")
    r.add_argument("--spp", type=int, default=128, help="samples per pixel (default 128)")
    add_out_args(r)
    add_transform_args(r)
    r.set_defaults(func=_render)


def _register_dataset(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("dataset", help="render a training (or held-out) set into one .npz file")
    d.add_argument("--out", default="runs/world/train.npz", help="output .npz (default runs/world/train.npz)")
    d.add_argument("--seeds", default="0:1000", help="seed range A:B (default 0:1000; held-out seeds start at 1000000)")
    d.add_argument("--size", type=int, default=128)
    d.add_argument("--spp", type=int, default=128)
    d.add_argument("--workers", type=int, default=2,
                   help="render processes, at most the machine's cores (default 2: this project's CPU machine has 2)")
    d.set_defaults(func=_dataset)


def _register_pack(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser("pack", help="rewrite training sets compactly into one (16-bit inverse depth, compressed)")
    k.add_argument("data", metavar="IN.npz", nargs="+", help="one or more training sets (merged in this order)")
    k.add_argument("out", metavar="OUT.npz")
    k.add_argument("--jpeg-quality", type=int, default=None, metavar="Q",
                   help="store the images as JPEG of this quality (1-100; 95: about 40.5 dB, half the file; the PSNR is printed): "
                        "lossy, so such a pack trains the UNet only (--vae-steps 0 --decoder-steps 0)")
    k.set_defaults(func=_pack)


def _register_train(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train (or resume) the miniature model; seeded, checkpointed")
    t.add_argument("--data", default="runs/world/train.npz")
    t.add_argument("--run-dir", default="runs/world/train", help="checkpoints and train.log (resumes from here)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--preset", default="cpu", choices=["cpu", "gpu", "tiny"],
                   help="cpu: the shipped model's recipe (default); gpu: continues the shipped model at 8x the batch "
                        "in about 7 minutes on one H100/H200 (cuda); tiny: a few steps of every stage (smoke test)")
    t.add_argument("--device", default=None, help="torch device (default: the preset's, cpu or cuda)")
    t.add_argument("--init-from", default=None, metavar="MODEL",
                   help="warm start of a new run: a model folder, 'tinyworld' (the shipped model, the cpu preset's "
                        "default) or '' (random); a run with checkpoints resumes from them instead")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the preset's; cpu: 1)")
    t.add_argument("--image-size", type=int, default=None, help="the dataset's image side (default: the preset's, 128)")
    t.add_argument("--vae-steps", type=int, default=None)
    t.add_argument("--unet-steps", type=int, default=None)
    t.add_argument("--unet-batch", type=int, default=None)
    t.add_argument("--unet-lr", type=float, default=None, help="UNet + text encoder learning rate (default: the preset's)")
    t.add_argument("--unet-dropout", type=float, default=None,
                   help="dropout in the UNet's residual blocks, in [0, 1) (default 0; a regulariser against memorising the scenes)")
    t.add_argument("--ground-weight", type=float, default=None, metavar="W",
                   help="weight of the token grounding loss (each object's words attend inside its mask; "
                        "TokenCompose's token loss, world/grounding.py); default 0 (off)")
    t.add_argument("--ground-steps", type=int, default=None, metavar="N",
                   help="apply the grounding loss in the run's first N UNet steps only, then the denoising loss "
                        "alone (default 0: every step)")
    t.add_argument("--offset-noise", type=float, default=None, metavar="S",
                   help="std of a per-image, per-channel constant added to the training noise (offset noise), so "
                        "that generated brightness follows the caption instead of the noise; default 0 (off)")
    t.add_argument("--stage", default="all", choices=["all", "decoder", "encoder"],
                   help="all: VAE, encoder, UNet, decoder fine-tuning (default); decoder or encoder: that stage alone "
                        "(beside a UNet run; the encoder stage's export keeps the warm start's UNet)")
    t.add_argument("--decoder-steps", type=int, default=None)
    t.add_argument("--encoder-steps", type=int, default=None,
                   help="steps of the encoder stage: the VAE encoder alone against the frozen decoder (default 0)")
    t.add_argument("--encoder-width", type=int, default=None, metavar="K",
                   help="VAE encoder channels / decoder channels: 1, or 2 to widen a 1x warm start without changing its "
                        "latents (default: the warm start's)")
    t.add_argument("--encoder-anchor", type=float, default=None,
                   help="weight of the encoder stage's latent-drift term (default 0.05)")
    t.add_argument("--max-minutes", type=float, default=0.0, help="stop with a checkpoint after this many minutes (0: no limit)")
    t.add_argument("--export", default=None, metavar="DIR", help="afterwards write the diffusers model folder here")
    t.set_defaults(func=_train)


def _register_export(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="write the diffusers model folder from a training run")
    e.add_argument("--run-dir", default="runs/world/train")
    e.add_argument("--out", required=True)
    e.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    e.set_defaults(func=_export)


def _register_eval(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("eval", help="quality on held-out seeds: PSNR/SSIM, silhouette IoU, colour error, grid.png")
    v.add_argument("--model", default="tinyworld")
    v.add_argument("--n", type=int, default=32, help="number of held-out scenes (default 32)")
    v.add_argument("--first-seed", type=int, default=None, metavar="S",
                   help="first held-out seed (default 1000000; training seeds are below it)")
    v.add_argument("--recon-n", type=int, default=8,
                   help="scenes (the first ones) that also get the null-text reconstruction figure (default 8; 0: none)")
    v.add_argument("--size", type=int, default=None, help="render size (default: the model's native size)")
    v.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    v.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (default 4)")
    v.add_argument("--train-data", default=None, metavar="NPZ",
                   help="a training set (handles world dataset): also report the denoising loss on its first --n "
                        "scenes, to compare with the held-out one (memorisation)")
    v.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: miniature models run fastest on one; two evals side by side "
                        "with torch's default of one per core took 190 s a scene instead of 33 s here)")
    v.add_argument("--no-leak-prior", action="store_true",
                   help="generate from plain noise even when the model has a leak prior (handles world leak-prior)")
    v.add_argument("--no-binding", action="store_true",
                   help="generate without binding each object's words to the region its depth gives it "
                        "(the layout-bound cross-attention of diffusion_handles.world.binding)")
    v.add_argument("--out", default="runs/world/eval")
    v.set_defaults(func=_eval)


def _register_leak_prior(sub: argparse._SubParsersAction) -> None:
    lk = sub.add_parser("leak-prior", help="a copy of a model with a leak prior: the brightness its generations start "
                                           "from, predicted from caption and depth (fitted on a training set)")
    lk.add_argument("--model", default="tinyworld", help="the model folder to copy (default: the embedded model)")
    lk.add_argument("--data", required=True, metavar="NPZ", help="a training set (handles world dataset)")
    lk.add_argument("--n", type=int, default=None, help="fit on its first N images (default: all)")
    lk.add_argument("--blocks", type=int, default=4, metavar="K",
                    help="predict a KxK grid of block means per latent channel (default 4; a divisor of the latent grid)")
    lk.add_argument("--holdout", type=float, default=0.1, metavar="F",
                    help="also fit on the first 1-F of the images and report the share of the block means' variance "
                         "it explains on the rest (default 0.1; 0: no report); the prior written is fitted on all")
    lk.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    lk.add_argument("--out", required=True, metavar="DIR", help="new folder for the model with its prior")
    lk.set_defaults(func=_leak_prior)


def _register_extend_vocab(sub: argparse._SubParsersAction) -> None:
    xv = sub.add_parser("extend-vocab", help="a copy of a model whose tokenizer knows every word of the world's "
                                             "captions now (word embeddings kept by token; UNet and VAE untouched)")
    xv.add_argument("--model", default="tinyworld", help="the model folder to copy (default: the embedded model)")
    xv.add_argument("--seed", type=int, default=0, help="seed of the new words' initial embeddings (default 0)")
    xv.add_argument("--out", required=True, metavar="DIR", help="new folder for the extended model")
    xv.set_defaults(func=_extend_vocab)


def _register_compare(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("compare", help="two eval runs scene by scene: paired differences with 95%% bootstrap "
                                       "intervals, and the VAE's worst scenes")
    c.add_argument("base", metavar="BASE", help="the reference eval (its folder or metrics.json), e.g. the shipped model's")
    c.add_argument("candidate", metavar="CANDIDATE", help="the eval to judge against BASE, on the same held-out seeds")
    c.add_argument("--labels", nargs=2, default=("base", "candidate"), metavar=("B", "C"), help="column names")
    c.add_argument("--json", default=None, metavar="FILE", help="also write the comparison here (a new file)")
    c.set_defaults(func=_compare)


def _register_join(sub: argparse._SubParsersAction) -> None:
    j = sub.add_parser("join", help="one model from two runs trained side by side: the UNet run's UNet and text "
                                    "encoder with the encoder run's VAE (checked to share the decoder)")
    j.add_argument("unet_model", metavar="UNET_MODEL", help="the exported model of the UNet run")
    j.add_argument("encoder_model", metavar="ENCODER_MODEL",
                   help="the exported model of the --stage encoder run started from the same model")
    j.add_argument("--out", required=True, metavar="DIR", help="new folder for the joined model")
    j.set_defaults(func=_join)


def _register_bundle_renderer(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bundle-renderer", help="a trimmed Mitsuba + Dr.Jit that renders TinyWorld (for a machine "
                                               "without them: 14 MB instead of 67)")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--wheels", metavar="DIR", help="a folder with one mitsuba and one drjit wheel (any Python version; "
                                                   "pip download ... --python-version 3.12)")
    src.add_argument("--installed", action="store_true", help="from the Mitsuba and Dr.Jit installed here")
    b.add_argument("--out", required=True, metavar="PATH", help="new .tar.xz file, or a new folder")
    b.set_defaults(func=_bundle_renderer)


def _register_export_3deditbench(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("export-3deditbench", help="write TinyWorld edits as 3DEditBench HDF5 cases (rendered ground truth)")
    x.add_argument("--scenes", type=int, default=50, help="number of cases (rigid edits only; default 50)")
    x.add_argument("--first-seed", type=int, default=None, metavar="S",
                   help="first scene seed (default: the benchmark's, 1000500)")
    x.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    x.add_argument("--spp", type=int, default=64, help="path-tracer samples per pixel (default 64)")
    x.add_argument("--out", required=True, metavar="DIR", help="new output folder (written whole or not at all)")
    x.set_defaults(func=_export_3deditbench)


def _render(args: argparse.Namespace) -> int:
    import json

    import numpy as np
    from PIL import Image

    from diffusion_handles.outputs import atomic_output_dir
    from diffusion_handles.world.render import depth_and_masks, object_pivot, render, scene_for_seed

    check_out(args)
    edit = edit_from_args(args)
    fov = fov_from_args(args)
    if args.size < 16 or args.size > 1024:
        raise HandlesError(f"--size: expected pixels in [16, 1024], got {args.size}")
    if args.spp < 1:
        raise HandlesError(f"--spp: expected a positive number, got {args.spp}")
    if args.scene is not None:
        scene = _read_scene(args.scene)
    else:
        seed = 0 if args.seed is None else args.seed
        if seed < 0:
            raise HandlesError(f"--seed: expected a non-negative integer, got {seed}")
        scene = scene_for_seed(seed, args.size, args.size)
    scene.fov_deg = fov
    if args.object is not None and args.camera:
        raise HandlesError("--camera: expected either --object K or --camera, got both")
    info: dict = {"edit": edit.to_dict()}
    if args.object is not None:
        if not 0 <= args.object < len(scene.objects):
            raise HandlesError(f"--object: expected an index in [0, {len(scene.objects) - 1}] (this scene has {len(scene.objects)} objects), got {args.object}")
        depth0, masks0 = depth_and_masks(scene)
        if not masks0[args.object].any():
            raise HandlesError(f"--object: object {args.object} is not visible in this scene, so it has no pivot")
        pivot = object_pivot(depth0, masks0[args.object], scene)
        info.update(object=args.object, pivot_camera=pivot.tolist(), transform=edit.resolve(pivot.tolist()).to_list())
        scene = scene.with_object_edit(args.object, edit, pivot)
    elif args.camera:
        if edit.scale != 1.0:
            raise HandlesError(f"--scale: a camera move cannot scale, expected 1, got {args.scale}")
        scene = scene.with_camera_edit(edit)
        info.update(camera=True)
    elif not edit.is_identity():
        raise HandlesError("--object: a transform was given but no --object K (or --camera) to apply it to")
    try:
        out = render(scene, spp=args.spp, seed=scene.seed)
    except RuntimeError as e:  # e.g. a camera that looks past the floor and the wall
        if args.scene is None:
            raise
        raise HandlesError(f"--scene: could not render {args.scene}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    with atomic_output_dir(args.out) as tmp:
        Image.fromarray(out.rgb).save(tmp / "rgb.png")
        np.save(tmp / "depth.npy", out.depth.astype(np.float32))
        for k, m in enumerate(out.masks):
            Image.fromarray(m.astype(np.uint8) * 255).save(tmp / f"mask_{k}.png")
        (tmp / "caption.txt").write_text(out.caption + "\n")
        (tmp / "scene.json").write_text(scene.to_json())
        if len(info) > 1:
            (tmp / "edit.json").write_text(json.dumps(info, indent=1))
    print(f"handles world render: wrote {args.out}/rgb.png depth.npy mask_*.png caption.txt scene.json")
    print(f"caption: {out.caption}")
    return 0


SCENE_FILE_MAX_BYTES = 1 << 20  # a scene.json is a few kB


def _read_scene(path: str):
    """``--scene FILE``: a TinyWorld scene validated like every other input (sizes within the
    ``--size`` limits); one-line :class:`HandlesError` naming the JSON key path otherwise."""
    from pathlib import Path

    from diffusion_handles.world.scene import MAX_SIDE, Scene

    p = Path(path)
    if not p.is_file():
        raise HandlesError(f"--scene: file not found: {p}")
    try:
        size = p.stat().st_size
        if size > SCENE_FILE_MAX_BYTES:
            raise HandlesError(f"--scene: expected a scene.json of at most {SCENE_FILE_MAX_BYTES // 1024} kB, got {size / 1024:.0f} kB")
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise HandlesError(f"--scene: expected a TinyWorld scene.json, could not read {p}: {e}") from None
    try:
        return Scene.from_json(text, max_side=MAX_SIDE)
    except HandlesError as e:
        raise HandlesError(f"--scene: {e}") from None


def _seed_range(text: str) -> range:
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise HandlesError(f"--seeds: expected A:B (e.g. 0:1000), got {text!r}") from None
    if not 0 <= a < b:
        raise HandlesError(f"--seeds: expected 0 <= A < B, got {text!r}")
    return range(a, b)


def _dataset(args: argparse.Namespace) -> int:
    import os

    from diffusion_handles.world.dataset import build_dataset

    cores = os.cpu_count() or 1
    if not 1 <= args.workers <= cores:
        raise HandlesError(f"--workers: expected 1 to {cores} (this machine's cores), got {args.workers}")
    out = build_dataset(args.out, _seed_range(args.seeds), size=args.size, spp=args.spp, workers=args.workers)
    print(f"handles world dataset: wrote {out}")
    return 0


def _pack(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diffusion_handles.world.dataset import (
        load_dataset,
        lossy_psnr,
        merge_datasets,
        save_dataset,
    )

    srcs, dst = [Path(p) for p in args.data], Path(args.out)
    for src in srcs:
        if not src.is_file():
            raise HandlesError(f"IN.npz: file not found: {src}")
    if dst.exists():
        raise HandlesError(f"OUT.npz: {dst} exists; choose a new file (nothing is overwritten)")
    if args.jpeg_quality is not None and not 1 <= args.jpeg_quality <= 100:
        raise HandlesError(f"--jpeg-quality: expected an integer in [1, 100], got {args.jpeg_quality}")
    parts = []
    for src in srcs:
        try:
            parts.append(load_dataset(src))
        except (OSError, ValueError, KeyError) as e:
            raise HandlesError(f"IN.npz: expected a TinyWorld training set, could not read {src}: {e}") from None
    try:
        data = merge_datasets(parts)
    except ValueError as e:
        raise HandlesError(f"IN.npz: {e}") from None
    save_dataset(dst, data, jpeg_quality=args.jpeg_quality)
    size = sum(src.stat().st_size for src in srcs)
    print(f"handles world pack: wrote {dst} ({len(data['seed'])} scenes, {dst.stat().st_size / 2**20:.1f} MiB, "
          f"from {size / 2**20:.1f} MiB)")
    if args.jpeg_quality is not None:  # what the lossy images cost, measured on the file as written
        mean, lowest = lossy_psnr(dst, data)
        print(f"handles world pack: JPEG quality {args.jpeg_quality}: images at {mean:.1f} dB PSNR against "
              f"the input (lowest {lowest:.1f} dB)")
    return 0


def _train(args: argparse.Namespace) -> int:
    import math
    from pathlib import Path

    import torch

    from diffusion_handles.world.train import config_from_preset, export, train

    if not Path(args.data).is_file():
        raise HandlesError(f"--data: file not found: {args.data} (make it with `handles world dataset`)")
    if args.init_from and args.init_from != "tinyworld" and not (Path(args.init_from) / "unet").is_dir():
        raise HandlesError(f"--init-from: expected a model folder with unet/ vae/ text_encoder/, 'tinyworld' or '', got {args.init_from!r}")
    if args.encoder_width is not None and args.encoder_width < 1:
        raise HandlesError(f"--encoder-width: expected a positive integer (1, or 2 to widen), got {args.encoder_width}")
    cfg = config_from_preset(args.preset, data=args.data, run_dir=args.run_dir, seed=args.seed, device=args.device,
                             init_from=args.init_from, stage=args.stage, vae_steps=args.vae_steps,
                             image_size=args.image_size, threads=args.threads,
                             unet_steps=args.unet_steps, unet_batch=args.unet_batch, unet_lr=args.unet_lr,
                             decoder_steps=args.decoder_steps, unet_dropout=args.unet_dropout,
                             ground_weight=args.ground_weight, ground_steps=args.ground_steps, offset_noise=args.offset_noise,
                             encoder_steps=args.encoder_steps, encoder_width=args.encoder_width,
                             encoder_anchor=args.encoder_anchor, max_minutes=args.max_minutes or None)
    if not (cfg.unet_lr > 0 and math.isfinite(cfg.unet_lr)):
        raise HandlesError(f"--unet-lr: expected a positive learning rate, got {cfg.unet_lr}")
    if not 0.0 <= cfg.unet_dropout < 1.0:
        raise HandlesError(f"--unet-dropout: expected a probability in [0, 1), got {cfg.unet_dropout}")
    if not (cfg.ground_weight >= 0 and math.isfinite(cfg.ground_weight)):
        raise HandlesError(f"--ground-weight: expected a finite weight >= 0, got {cfg.ground_weight}")
    if cfg.ground_steps < 0:
        raise HandlesError(f"--ground-steps: expected a step count >= 0, got {cfg.ground_steps}")
    if not (0 <= cfg.offset_noise <= 1):
        raise HandlesError(f"--offset-noise: expected a standard deviation in [0, 1], got {cfg.offset_noise}")
    if not (cfg.encoder_anchor >= 0 and math.isfinite(cfg.encoder_anchor)):
        raise HandlesError(f"--encoder-anchor: expected a finite weight >= 0, got {cfg.encoder_anchor}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise HandlesError(f"--device: expected an available device, got {cfg.device!r} (torch sees no CUDA GPU)")
    try:
        torch.device(cfg.device)
    except RuntimeError:
        raise HandlesError(f"--device: expected a torch device such as cpu or cuda, got {cfg.device!r}") from None
    from diffusion_handles.world.dataset import jpeg_quality_of
    from diffusion_handles.world.train import encoder_width_of, init_folder

    folder = init_folder(cfg)
    have = encoder_width_of(folder) if folder is not None and (folder / "vae" / "config.json").is_file() else 1
    if cfg.encoder_width and (cfg.encoder_width < have or cfg.encoder_width % have):
        raise HandlesError(f"--encoder-width: expected a multiple of the warm start's encoder width {have} ({folder}), got {cfg.encoder_width}")
    try:
        lossy = jpeg_quality_of(args.data) is not None
    except (OSError, ValueError) as e:
        raise HandlesError(f"--data: expected a TinyWorld training set (.npz), could not read {args.data}: {e}") from None
    if lossy and (cfg.vae_steps > 0 or cfg.decoder_steps > 0):
        raise HandlesError(f"--data: {args.data} is a JPEG pack (lossy images) and trains the UNet only: expected "
                           f"--vae-steps 0 --decoder-steps 0, got {cfg.vae_steps} and {cfg.decoder_steps}")
    run = train(cfg)
    if args.export:
        export(run, args.export)
        print(f"handles world train: exported the model to {args.export}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diffusion_handles.world.train import export

    check_out(args)
    if not any((Path(args.run_dir) / f).is_file() for f in ("unet.pt", "init_unet.pt")):
        raise HandlesError(f"--run-dir: expected a training run with unet.pt (or init_unet.pt), got {args.run_dir}")
    export(args.run_dir, args.out, use_ema=not args.no_ema)
    print(f"handles world export: wrote {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diffusion_handles.world.dataset import HELDOUT_SEED0
    from diffusion_handles.world.evaluate import evaluate

    check_out(args)
    if args.n < 2:
        raise HandlesError(f"--n: expected at least 2 scenes, got {args.n}")
    if args.first_seed is not None and not HELDOUT_SEED0 <= args.first_seed < 2**31 - args.n:
        raise HandlesError(f"--first-seed: expected a held-out seed in [{HELDOUT_SEED0}, {2**31 - args.n}) "
                           f"(seeds below {HELDOUT_SEED0} are training seeds), got {args.first_seed}")
    if args.recon_n < 0:
        raise HandlesError(f"--recon-n: expected a non-negative number of scenes, got {args.recon_n}")
    if args.size is not None and not 16 <= args.size <= 1024:
        raise HandlesError(f"--size: expected pixels in [16, 1024], got {args.size}")
    if args.steps < 1:
        raise HandlesError(f"--steps: expected at least 1, got {args.steps}")
    if args.train_data is not None and not Path(args.train_data).is_file():
        raise HandlesError(f"--train-data: file not found: {args.train_data}")
    if args.threads < 1:
        raise HandlesError(f"--threads: expected at least 1, got {args.threads}")
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        res = evaluate(args.model, n=args.n, out=args.out, steps=args.steps, guidance=args.guidance,
                       first_seed=args.first_seed, recon_n=args.recon_n, size=args.size, train_data=args.train_data,
                       leak_prior=not args.no_leak_prior, binding=not args.no_binding)
    finally:
        torch.set_num_threads(before)  # callers in the same process (tests, notebooks) keep theirs
    for name, m in res["summary"].items():
        print(f"{name:8s} " + " ".join(f"{k} {v:.3f}" for k, v in m.items()))
    print("figures  " + " ".join(f"{k} {v}" if isinstance(v, bool) else f"{k} {v:.3f}"
                                 for k, v in res["figures"].items() if v is not None))
    print(f"handles world eval: wrote {args.out}/metrics.json and grid.png")
    return 0


def _leak_prior(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diffusion_handles.diffusion.backbone import Backbone, model_folder
    from diffusion_handles.world import leak_prior as lp

    check_out(args)
    folder = model_folder(args.model)
    if folder is None:
        raise HandlesError(f"--model: expected a local model folder or 'tinyworld', got {args.model}")
    if not Path(args.data).is_file():
        raise HandlesError(f"--data: file not found: {args.data}")
    if args.n is not None and args.n < 2:
        raise HandlesError(f"--n: expected at least 2 images, got {args.n}")
    if args.threads < 1:
        raise HandlesError(f"--threads: expected at least 1, got {args.threads}")
    if not 0.0 <= args.holdout < 1.0:
        raise HandlesError(f"--holdout: expected a share in [0, 1), got {args.holdout}")
    import torch

    from diffusion_handles.world.dataset import load_dataset

    torch.set_num_threads(args.threads)
    bb = Backbone.from_pretrained(folder)
    data = load_dataset(args.data)
    h, w = bb.latent_hw(bb.work_size(tuple(data["rgb"].shape[1:3])))
    if args.blocks < 1 or h % args.blocks or w % args.blocks:
        raise HandlesError(f"--blocks: expected a divisor of the latent grid {h}x{w} of --data's images, got {args.blocks}")
    prior, record = lp.fit_with_record(bb, data, args.n, blocks=args.blocks, holdout=args.holdout)
    lp.write_model(folder, prior, args.out, record)
    stage, r2 = record["stages"]["leak_prior"], record["stages"]["leak_prior"].get("heldout_r2")
    images, seconds = stage["images"], stage["seconds"]
    held = "" if r2 is None else f"; it explains {100 * r2:.1f} % of the block means' variance on the held-out {args.holdout:g}"
    print(f"handles world leak-prior: wrote {args.out} ({folder.name} with {lp.PRIOR_FILE}, fitted on {images} "
          f"images in {seconds:.0f} s{held})")
    return 0


def _extend_vocab(args: argparse.Namespace) -> int:
    from diffusion_handles.diffusion.backbone import model_folder
    from diffusion_handles.world.model import extend_vocabulary

    check_out(args)
    folder = model_folder(args.model)
    if folder is None or not (folder / "tokenizer").is_dir() or not (folder / "text_encoder").is_dir():
        raise HandlesError(f"--model: expected a local model folder with tokenizer/ and text_encoder/, or 'tinyworld', "
                           f"got {args.model}")
    change = extend_vocabulary(folder, args.out, seed=args.seed)
    print(f"handles world extend-vocab: wrote {args.out} (words added: {' '.join(change['words_added'])}; "
          f"{change['rows_copied']} word embeddings kept, {change['rows_new']} new); fit its leak prior with "
          f"handles world leak-prior --model {args.out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from diffusion_handles.world.compare import compare, format_table, load_metrics

    out = Path(args.json) if args.json else None
    if out is not None and (out.exists() or not out.parent.is_dir()):
        raise HandlesError(f"--json: expected a new file in an existing folder, got {args.json}"
                           + (" (it exists; nothing was overwritten)" if out.exists() else ""))
    base, cand = load_metrics(args.base, "BASE"), load_metrics(args.candidate, "CANDIDATE")
    res = compare(base, cand, names=("BASE", "CANDIDATE"))
    print(format_table(res, *args.labels))
    if out is not None:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"base": str(args.base), "candidate": str(args.candidate), **res}, indent=1))
        tmp.replace(out)
        print(f"handles world compare: wrote {out}")
    return 0


def _join(args: argparse.Namespace) -> int:
    from diffusion_handles.world.join import join

    check_out(args)
    out = join(args.unet_model, args.encoder_model, args.out, names=("UNET_MODEL", "ENCODER_MODEL", "--out"))
    print(f"handles world join: wrote {out} (UNet and text encoder of {args.unet_model}, VAE of {args.encoder_model})")
    return 0


def _bundle_renderer(args: argparse.Namespace) -> int:
    from pathlib import Path

    from diffusion_handles.world.renderer_bundle import build_bundle

    wheels = None
    if args.wheels is not None:
        folder = Path(args.wheels)
        wheels = sorted(folder.glob("mitsuba-*.whl")) + sorted(folder.glob("drjit-*.whl"))
        if not folder.is_dir() or len(wheels) != 2:
            raise HandlesError(f"--wheels: expected a folder with one mitsuba-*.whl and one drjit-*.whl, got "
                               f"{[w.name for w in wheels] if folder.is_dir() else 'no folder'} in {args.wheels}")
    if Path(args.out).exists():
        raise HandlesError(f"--out: expected a new path, got {args.out} (it exists; nothing was overwritten)")
    info = build_bundle(args.out, wheels)
    size = Path(args.out).stat().st_size if Path(args.out).is_file() else info["bytes"]
    print(f"handles world bundle-renderer: wrote {args.out} ({info['files']} files, {size / 2**20:.1f} MiB; "
          f"plugins {', '.join(info['plugins'])})")
    return 0


def _export_3deditbench(args: argparse.Namespace) -> int:
    from diffusion_handles.bench.editbench3d import export_tinyworld
    from diffusion_handles.bench.editbench3d.io import require_h5py

    check_out(args)
    require_h5py("export-3deditbench")  # the 'bench3d' extra, before anything renders
    files = export_tinyworld(args.scenes, args.out, first_seed=args.first_seed, size=args.size, spp=args.spp, log=print)
    print(f"handles world export-3deditbench: wrote {len(files)} case(s) to {args.out}")
    return 0
