"""Time the perception stages at the real models' sizes (random weights: no download needed).

The default checkpoints cannot be downloaded here, but their cost does not depend on the weight
values. This builds each default architecture from its ``transformers`` config with random
weights, gives it the checkpoint's preprocessing (input sizes), and times one call through the
project's wrappers on a 512x384 photo-sized image:

  * ``depth ZoeDepth``: BEiT-L/384 backbone + metric bins (``Intel/zoedepth-nyu-kitti`` layout),
    input 384x512;
  * ``depth Depth Anything V2 small``: DINOv2-S backbone, input 518 on the short side;
  * ``detect OWLv2``: ViT-B/16 at 960x960 (``google/owlv2-base-patch16-ensemble`` layout);
  * ``SAM box -> mask``: ViT-B at 1024x1024 (``facebook/sam-vit-base`` layout);
  * ``remove (OpenCV Telea)`` and ``align`` (the d'_b least-squares fit).

Process CPU time is reported next to wall time: on a shared, busy machine wall time grows with
the load, CPU time (single-threaded with ``--threads 1``) stays comparable. The configs follow
the checkpoints' published sizes; small details (e.g. ZoeDepth's second bin head) may differ.

Usage: ``python benchmarks/perception_speed.py [--threads 1] [--repeats 1] [--only zoe owl sam da]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _timed(fn, repeats: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def _image(h: int = 384, w: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.linspace(0, 1, h)[:, None].expand(h, w)
    img = torch.stack([0.3 + 0.5 * ys, 0.3 + 0.4 * ys, 0.35 + 0.3 * ys])[None].clone()
    mask = torch.zeros(1, 1, h, w)
    mask[..., 150:260, 200:330] = 1
    img[:, :, 150:260, 200:330] = torch.tensor([0.8, 0.15, 0.1])[None, :, None, None]
    return img, mask


def zoedepth():
    from transformers import ZoeDepthConfig, ZoeDepthForDepthEstimation, ZoeDepthImageProcessorPil

    from diffusion_handles.perception.depth import DepthConfig, DepthEstimator

    model = ZoeDepthForDepthEstimation(ZoeDepthConfig())  # BEiT-L/384 backbone, as the checkpoint
    proc = ZoeDepthImageProcessorPil(size={"height": 384, "width": 512}, keep_aspect_ratio=True, ensure_multiple_of=32)
    return DepthEstimator(model, proc, DepthConfig(), "ZoeDepth (random weights)")


def depth_anything_small():
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        DPTImageProcessorPil,
    )

    from diffusion_handles.perception.depth import DepthConfig, DepthEstimator

    model = DepthAnythingForDepthEstimation(DepthAnythingConfig())  # DINOv2-S, the "Small" layout
    proc = DPTImageProcessorPil(size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14)
    return DepthEstimator(model, proc, DepthConfig(), "Depth Anything V2 small (random weights)")


def owlv2():
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessorPil,
        Owlv2Processor,
    )

    from diffusion_handles.perception.segment import SegmentConfig, TextDetector

    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
    vocab.update({c + "</w>": 26 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")})
    vocab.update({"<|startoftext|>": 49406, "<|endoftext|>": 49407})
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    model = Owlv2ForObjectDetection(Owlv2Config(vision_config={"image_size": 960}))  # ViT-B/16 at 960, text CLIP-B
    proc = Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size={"height": 960, "width": 960}), tokenizer=tok)
    return TextDetector(model, proc, SegmentConfig(), "OWLv2 base (random weights)")


def sam():
    from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor

    from diffusion_handles.perception.segment import SamSegmenter, SegmentConfig

    model = SamModel(SamConfig())  # ViT-B image encoder at 1024, as sam-vit-base
    return SamSegmenter(model, SamProcessor(image_processor=SamImageProcessorPil()), SegmentConfig(), "SAM ViT-B (random weights)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=["zoe", "da", "owl", "sam", "classic"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image, mask = _image()
    rows = []

    def run(name, fn):
        with torch.no_grad():
            fn()  # warm-up (allocations, lazy init)
            wall, cpu = _timed(fn, args.repeats)
        rows.append((name, wall, cpu))
        print(f"{name:40s} wall {wall:7.2f} s   cpu {cpu:7.2f} s", flush=True)

    if "zoe" in args.only:
        est = zoedepth()
        run("depth ZoeDepth (BEiT-L, 384x512)", lambda: est.estimate(image))
        del est
    if "da" in args.only:
        est = depth_anything_small()
        run("depth Depth Anything V2 small (518)", lambda: est.estimate(image))
        del est
    if "owl" in args.only:
        det = owlv2()
        run("detect OWLv2 base (960x960)", lambda: det.detect(image, "a red box"))
        del det
    if "sam" in args.only:
        seg = sam()
        run("SAM ViT-B box -> mask (1024)", lambda: seg.mask_from_box(image, (200, 150, 330, 260)))
        del seg
    if "classic" in args.only:
        from diffusion_handles.perception.depth import align_scale_shift
        from diffusion_handles.perception.inpaint import InpaintConfig, remove_object

        cfg = InpaintConfig(model="opencv-telea")
        run("remove object (OpenCV Telea, 2% dilation)", lambda: remove_object(image, mask, cfg))
        depth = 1.0 + torch.rand(1, 1, 384, 512)
        run("align d'_b (least squares, 512x384)", lambda: align_scale_shift(depth, 2 * depth + 1, mask < 0.5))
    print(f"threads={args.threads} repeats={args.repeats} image=512x384")


if __name__ == "__main__":
    main()
