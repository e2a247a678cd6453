"""Picking the object: a text query (zero-shot detector -> best box -> SAM) or clicks (-> SAM).

The paper selects objects with a SAM-based text segmenter (LangSAM, Sec. 5). Here the two
stages are explicit and both come from ``transformers``:

1. :class:`TextDetector`: a zero-shot detector, OWLv2 (default,
   ``google/owlv2-base-patch16-ensemble``) or Grounding DINO
   (``IDEA-Research/grounding-dino-tiny``), scores boxes against the query. Boxes are in
   pixels of the input image, ``(x0, y0, x1, y1)``; overlapping boxes are merged by
   non-maximum suppression; :func:`choose_candidate` keeps the best box and says clearly when
   several boxes or none pass the score threshold.
2. :class:`SamSegmenter`: SAM (``facebook/sam-vit-base``) turns the box, or one or more
   positive clicks, into a mask, upsampled back to the image size by SAM's own processor.

Masks are ``(1, 1, H, W)`` float32 in ``{0, 1}`` (1 = object), like
:func:`diffusion_handles.io.load_mask` returns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from diffusion_handles.errors import HandlesError
from diffusion_handles.hub import load_pretrained
from diffusion_handles.perception.depth import image_to_pil
from diffusion_handles.perception.model_folder import check_model_folder, guarded_loader

DEFAULT_DETECTOR_MODEL = "google/owlv2-base-patch16-ensemble"
DEFAULT_SAM_MODEL = "facebook/sam-vit-base"
# Score thresholds per detector family: the values their authors' examples use
# (OWLv2: 0.1 in the transformers docs; Grounding DINO: box threshold 0.35, 0.3 in HF docs).
DEFAULT_THRESHOLDS = {"owlv2": 0.1, "owlvit": 0.1, "grounding-dino": 0.3, "mm-grounding-dino": 0.3}


@dataclass
class SegmentConfig:
    """Models and thresholds for object selection.

    Attributes:
        detector_model: zero-shot detector, hub id or local folder (OWLv2/OWL-ViT/Grounding DINO).
        sam_model: SAM, hub id or local folder.
        threshold: detector score a box needs to count as a match (None: per family, see
            :data:`DEFAULT_THRESHOLDS`).
        nms_iou: boxes overlapping a better one by more than this IoU are the same object.
        max_candidates: how many boxes to report (best first).
        pick: use this candidate (0 = best) instead of the best one.
        device, dtype: where the models run.
    """

    detector_model: str = DEFAULT_DETECTOR_MODEL
    sam_model: str = DEFAULT_SAM_MODEL
    threshold: float | None = None
    nms_iou: float = 0.5
    max_candidates: int = 10
    pick: int | None = None
    device: str = "cpu"
    dtype: torch.dtype = torch.float32


@dataclass
class Candidate:
    """One detected box: ``box`` ``(x0, y0, x1, y1)`` in pixels of the input image."""

    box: tuple[float, float, float, float]
    score: float
    label: str

    def to_json(self) -> dict:
        d = asdict(self)
        d["box"] = [round(float(v), 1) for v in self.box]
        d["score"] = round(float(self.score), 4)
        return d


@dataclass
class Selection:
    """The chosen object.

    Attributes:
        mask: ``(1, 1, H, W)`` float32 in ``{0, 1}``.
        source: ``"text"``, ``"click"`` or ``"file"``.
        candidates: detector boxes, best first (text queries only).
        chosen: index into ``candidates`` of the box given to SAM, or None.
        threshold: the score threshold used (text queries only).
        clicks: the clicks ``(x, y)`` in pixels (click selection only).
        sam_score: SAM's predicted IoU of the chosen mask.
        notes: human-readable remarks (e.g. "3 objects matched ..."), also printed by the CLI.
    """

    mask: torch.Tensor
    source: str
    candidates: list[Candidate] = field(default_factory=list)
    chosen: int | None = None
    threshold: float | None = None
    clicks: list[tuple[float, float]] = field(default_factory=list)
    sam_score: float | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "source": self.source,
            "candidates": [c.to_json() for c in self.candidates],
            "matched": sum(1 for c in self.candidates if self.threshold is not None and c.score >= self.threshold),
            "chosen": self.chosen,
            "threshold": self.threshold,
            "clicks": [list(c) for c in self.clicks],
            "sam_score": None if self.sam_score is None else round(self.sam_score, 4),
            "mask_pixels": int(self.mask.sum().item()),
            "notes": list(self.notes),
        }


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``(N, M)`` of boxes ``a`` ``(N, 4)`` and ``b`` ``(M, 4)`` in ``(x0, y0, x1, y1)``."""
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp_min(1e-12)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float, keep_max: int) -> torch.Tensor:
    """Indices of boxes kept by greedy non-maximum suppression, best first (at most ``keep_max``).

    Only the 100 best-scoring boxes are considered (detectors emit thousands of low scores).
    """
    order = torch.argsort(scores, descending=True)[:100]
    ious = box_iou(boxes[order], boxes[order])  # (K, K)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep: list[int] = []
    for i in range(len(order)):  # loop over candidate boxes (<= 100), not pixels
        if suppressed[i]:
            continue
        keep.append(int(order[i]))
        if len(keep) >= keep_max:
            break
        suppressed |= ious[i] > iou
    return torch.tensor(keep, dtype=torch.long)


class NoMatchError(HandlesError):
    """No detector box reached the threshold; carries the candidates for the record."""

    def __init__(self, message: str, candidates: list[Candidate], threshold: float):
        super().__init__(message)
        self.candidates = candidates
        self.threshold = threshold


def choose_candidate(candidates: list[Candidate], threshold: float, query: str, pick: int | None = None) -> tuple[int, list[str]]:
    """The candidate to segment and notes for the user.

    Raises:
        NoMatchError: when no candidate reaches ``threshold`` (listing the best scores).
        HandlesError: when ``pick`` is out of range.
    """
    matched = [i for i, c in enumerate(candidates) if c.score >= threshold]
    if not matched:
        best = ", ".join(f"{c.score:.3f}" for c in candidates[:3]) or "none"
        raise NoMatchError(f"--object: no object matched {query!r} (best scores {best}, threshold {threshold:g}); "
                           f"try other words, a lower --box-threshold, --click X,Y or --mask FILE", candidates, threshold)
    notes: list[str] = []
    if pick is not None:
        if not 0 <= pick < len(matched):
            raise HandlesError(f"--pick: expected an index in [0, {len(matched) - 1}] "
                               f"({len(matched)} objects matched {query!r}), got {pick}")
        idx = matched[pick]
        notes.append(f"{len(matched)} objects matched {query!r}; using candidate {pick} "
                     f"(score {candidates[idx].score:.3f}) as asked by --pick")
        return idx, notes
    idx = matched[0]
    if len(matched) > 1:
        scores = ", ".join(f"{candidates[i].score:.3f}" for i in matched)
        notes.append(f"{len(matched)} objects matched {query!r} (scores {scores}); using the best "
                     f"(box {', '.join(f'{v:.0f}' for v in candidates[idx].box)}); "
                     f"pass --pick N, --click X,Y or --mask FILE to choose another")
    return idx, notes


def _family(model_type: str) -> str:
    return model_type.replace("_", "-")


class TextDetector:
    """A ``transformers`` zero-shot object detector (OWLv2, OWL-ViT or Grounding DINO)."""

    def __init__(self, model, processor, config: SegmentConfig, source: str):
        self.model = model.eval()
        self.processor = processor
        self.config = config
        self.source = source
        self.family = _family(model.config.model_type)
        if self.family not in DEFAULT_THRESHOLDS:
            raise HandlesError(f"--detector-model: expected an OWLv2, OWL-ViT or Grounding DINO model, "
                               f"got model type {model.config.model_type!r} from {source}")

    @property
    def threshold(self) -> float:
        t = self.config.threshold
        return DEFAULT_THRESHOLDS[self.family] if t is None else float(t)

    @classmethod
    def load(cls, config: SegmentConfig) -> TextDetector:
        def _load(name: str, local_only: bool):
            from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

            model = AutoModelForZeroShotObjectDetection.from_pretrained(name, local_files_only=local_only, dtype=config.dtype)
            processor = AutoProcessor.from_pretrained(name, local_files_only=local_only)
            return model, processor

        check_model_folder(config.detector_model, option="--detector-model", what="zero-shot object detection",
                           model_types=DEFAULT_THRESHOLDS)
        model, processor = load_pretrained(guarded_loader(_load), config.detector_model, what="text detection",
                                           option="--detector-model", bypass="give --click X,Y or --mask FILE instead of --object")
        return cls(model.to(config.device), processor, config, config.detector_model)

    @torch.no_grad()
    def detect(self, image: torch.Tensor, text: str) -> list[Candidate]:
        """Boxes for the query, best first, after non-maximum suppression.

        Args:
            image: ``(1, 3, H, W)`` RGB in ``[0, 1]``.
            text: the query, e.g. ``"the red mug"``.
        """
        h, w = image.shape[-2:]
        pil = image_to_pil(image)
        dev = self.config.device
        if self.family.startswith(("owl",)):
            inputs = self.processor(text=[[text]], images=pil, return_tensors="pt", padding=True)
            inputs = {k: (v.to(dev, self.model.dtype) if v.is_floating_point() else v.to(dev)) for k, v in inputs.items()}
            outputs = self.model(**inputs)
            # OWLv2 pads the image to a square at the bottom/right: boxes are relative to it.
            side = max(h, w) if self.family == "owlv2" else None
            size = (side, side) if side else (h, w)
            res = self.processor.image_processor.post_process_object_detection(
                outputs=outputs, threshold=-1.0, target_sizes=[size])[0]
            labels = [text] * len(res["scores"])
        else:  # Grounding DINO wants lower-case phrases ending with a dot
            query = text.strip().lower()
            query = query if query.endswith(".") else query + "."
            inputs = self.processor(images=pil, text=query, return_tensors="pt")
            inputs = {k: (v.to(dev, self.model.dtype) if v.is_floating_point() else v.to(dev)) for k, v in inputs.items()}
            outputs = self.model(**inputs)
            res = self.processor.post_process_grounded_object_detection(
                outputs, input_ids=inputs["input_ids"], threshold=-1.0, target_sizes=[(h, w)])[0]
            labels = [text] * len(res["scores"])  # one query: every box is a candidate for it
        scores = res["scores"].float().cpu()
        boxes = res["boxes"].float().cpu()  # (N, 4) x0, y0, x1, y1 in pixels
        boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                             boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)
        ok = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1) & torch.isfinite(scores)
        idx_ok = torch.nonzero(ok).flatten()
        if idx_ok.numel() == 0:
            return []
        keep = idx_ok[nms(boxes[idx_ok], scores[idx_ok], self.config.nms_iou, self.config.max_candidates)]
        return [Candidate(tuple(float(v) for v in boxes[i].tolist()), float(scores[i]), labels[i]) for i in keep.tolist()]


class SamSegmenter:
    """SAM from ``transformers`` (``SamModel`` + ``SamProcessor``): boxes or clicks -> mask."""

    def __init__(self, model, processor, config: SegmentConfig, source: str):
        self.model = model.eval()
        self.processor = processor
        self.config = config
        self.source = source

    @classmethod
    def load(cls, config: SegmentConfig, *, bypass: str | None = "give --mask FILE to skip segmentation") -> SamSegmenter:
        def _load(name: str, local_only: bool):
            from transformers import AutoProcessor, SamModel

            model = SamModel.from_pretrained(name, local_files_only=local_only, dtype=config.dtype)
            processor = AutoProcessor.from_pretrained(name, local_files_only=local_only)
            return model, processor

        check_model_folder(config.sam_model, option="--sam-model", what="SAM", model_types=("sam",))
        model, processor = load_pretrained(guarded_loader(_load), config.sam_model, what="SAM", option="--sam-model",
                                           bypass=bypass)
        return cls(model.to(config.device), processor, config, config.sam_model)

    @torch.no_grad()
    def _run(self, image: torch.Tensor, multimask: bool, **prompts) -> tuple[torch.Tensor, float]:
        h, w = image.shape[-2:]
        inputs = self.processor(images=image_to_pil(image), return_tensors="pt", **prompts)
        dev = self.config.device
        model_inputs = {k: (v.to(dev, self.model.dtype) if v.is_floating_point() else v.to(dev))
                        for k, v in inputs.items() if k not in ("original_sizes", "reshaped_input_sizes")}
        outputs = self.model(**model_inputs, multimask_output=multimask)
        # pred_masks: (1, 1, K, h', w') low-resolution logits; iou_scores: (1, 1, K)
        masks = self.processor.post_process_masks(outputs.pred_masks.float().cpu(), inputs["original_sizes"].cpu(),
                                                  inputs["reshaped_input_sizes"].cpu())[0]  # (1, K, H, W) bool
        iou = outputs.iou_scores.float().cpu()[0, 0]  # (K,)
        k = int(torch.argmax(iou))
        mask = masks[0, k].float().reshape(1, 1, h, w)  # back at the input image's size
        return mask, float(iou[k])

    def mask_from_box(self, image: torch.Tensor, box: tuple[float, float, float, float]) -> tuple[torch.Tensor, float]:
        """``(1, 1, H, W)`` {0, 1} mask of the object in ``box`` (pixels, x0 y0 x1 y1) and SAM's IoU score."""
        return self._run(image, False, input_boxes=[[[float(v) for v in box]]])

    def mask_from_clicks(self, image: torch.Tensor, clicks: list[tuple[float, float]]) -> tuple[torch.Tensor, float]:
        """Mask from positive clicks ``(x, y)`` in pixels. One click: the best of SAM's three
        proposals (by predicted IoU); several clicks: one mask covering them."""
        points = [[[float(x), float(y)] for x, y in clicks]]  # (image, point batch=1, N, 2)
        return self._run(image, len(clicks) == 1, input_points=[points], input_labels=[[[1] * len(clicks)]])


def check_clicks(clicks: list[tuple[float, float]], height: int, width: int) -> list[tuple[float, float]]:
    out = []
    for x, y in clicks:
        if not (0 <= x < width and 0 <= y < height):
            raise HandlesError(f"--click: expected X,Y inside the {width}x{height} image (0 <= X < {width}, "
                               f"0 <= Y < {height}), got {x:g},{y:g}")
        out.append((float(x), float(y)))
    if not out:
        raise HandlesError("--click: expected at least one X,Y")
    return out


def parse_click(text: str) -> tuple[float, float]:
    """``"X,Y"`` (pixels, x to the right, y down) -> ``(x, y)``."""
    parts = str(text).replace(" ", "").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise HandlesError(f"--click: expected X,Y in pixels (e.g. 120,80), got {text!r}") from None
    if not (np.isfinite(x) and np.isfinite(y)):
        raise HandlesError(f"--click: expected finite X,Y, got {text!r}")
    return x, y


def select_object(
    image: torch.Tensor,
    *,
    text: str | None = None,
    clicks: list[tuple[float, float]] | None = None,
    config: SegmentConfig | None = None,
    detector: TextDetector | None = None,
    sam: SamSegmenter | None = None,
) -> Selection:
    """The object mask from a text query or clicks (exactly one of them).

    Args:
        image: ``(1, 3, H, W)`` RGB in ``[0, 1]``.
        text: query for the zero-shot detector; its best box (or ``config.pick``) goes to SAM.
        clicks: positive clicks ``(x, y)`` in pixels.
        config: models and thresholds; ``detector`` / ``sam`` may be passed already loaded.

    Raises:
        HandlesError: no or ambiguous prompt, no match, clicks outside the image, empty mask,
            or weights that cannot be loaded.
    """
    config = config or SegmentConfig()
    if (text is None) == (not clicks):
        raise HandlesError("--object/--click: expected exactly one of a text query or clicks")
    h, w = image.shape[-2:]
    if text is not None:
        if not text.strip():
            raise HandlesError("--object: expected a non-empty text query, got ''")
        detector = detector or TextDetector.load(config)
        sam = sam or SamSegmenter.load(config, bypass="give --mask FILE instead of --object")
        candidates = detector.detect(image, text)
        idx, notes = choose_candidate(candidates, detector.threshold, text, config.pick)
        mask, score = sam.mask_from_box(image, candidates[idx].box)
        sel = Selection(mask=mask, source="text", candidates=candidates, chosen=idx,
                        threshold=detector.threshold, sam_score=score, notes=notes)
        what = f"--object {text!r}"
    else:
        pts = check_clicks(list(clicks), h, w)
        sam = sam or SamSegmenter.load(config, bypass="give --mask FILE instead of --click")
        mask, score = sam.mask_from_clicks(image, pts)
        sel = Selection(mask=mask, source="click", clicks=pts, sam_score=score)
        what = "--click " + " ".join(f"{x:g},{y:g}" for x, y in pts)
    if not bool(mask.bool().any()):
        raise HandlesError(f"{what}: SAM returned an empty mask; try another prompt or give --mask FILE")
    return sel


def overlay_image(image: torch.Tensor, mask: torch.Tensor, selection: Selection | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8 picture: the image, the mask tinted red with its outline, every
    candidate box with its score (chosen box green, other matches yellow, the rest grey) and
    the clicks as circles."""
    import cv2

    rgb = (image[0].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    m = mask.detach().cpu().squeeze().numpy() > 0.5
    out = rgb.copy()
    red = np.array([255, 40, 40], dtype=np.float32)
    out[m] = (0.55 * out[m].astype(np.float32) + 0.45 * red).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thick = max(1, round(max(m.shape) / 300))
    cv2.drawContours(out, contours, -1, (255, 255, 255), thick)
    if selection is not None:
        font = max(0.3, max(m.shape) / 1200)
        for i in reversed(range(len(selection.candidates))):
            c = selection.candidates[i]
            matched = selection.threshold is not None and c.score >= selection.threshold
            colour = (40, 220, 40) if i == selection.chosen else ((250, 210, 0) if matched else (150, 150, 150))
            x0, y0, x1, y1 = (int(round(v)) for v in c.box)
            cv2.rectangle(out, (x0, y0), (x1, y1), colour, thick * (2 if i == selection.chosen else 1))
            cv2.putText(out, f"{i}: {c.score:.2f}", (x0 + 2, max(y0 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                        font, colour, thick, cv2.LINE_AA)
        for x, y in selection.clicks:
            cv2.circle(out, (int(round(x)), int(round(y))), 3 * thick + 2, (40, 220, 40), -1)
            cv2.circle(out, (int(round(x)), int(round(y))), 3 * thick + 2, (0, 0, 0), 1)
    return out
