"""Object selection: detector boxes -> choice -> SAM mask at the image's size; clicks -> SAM."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffusion_handles.errors import HandlesError
from diffusion_handles.perception.segment import (
    Candidate,
    SamSegmenter,
    SegmentConfig,
    TextDetector,
    box_iou,
    choose_candidate,
    nms,
    overlay_image,
    parse_click,
    select_object,
)


def test_box_iou_and_nms():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.0]])
    iou = box_iou(boxes, boxes)
    assert iou[0, 0] == pytest.approx(1.0) and iou[0, 2] == 0
    assert iou[0, 1] == pytest.approx(81 / 119)
    keep = nms(boxes, torch.tensor([0.5, 0.9, 0.3]), iou=0.5, keep_max=10)
    assert keep.tolist() == [1, 2]  # the weaker of the overlapping pair is dropped
    assert nms(boxes, torch.tensor([0.5, 0.9, 0.3]), iou=0.5, keep_max=1).tolist() == [1]


def _cands(*scores):
    return [Candidate((0, 0, 5 + i, 5 + i), s, "mug") for i, s in enumerate(scores)]


def test_choose_candidate_none_several_and_pick():
    with pytest.raises(HandlesError, match=r"no object matched 'mug' \(best scores 0.080, 0.050") as e:
        choose_candidate(_cands(0.08, 0.05), 0.1, "mug")
    assert "--click" in str(e.value) and "--mask" in str(e.value) and "\n" not in str(e.value)
    idx, notes = choose_candidate(_cands(0.9, 0.4, 0.05), 0.1, "mug")
    assert idx == 0 and len(notes) == 1 and "2 objects matched 'mug'" in notes[0] and "0.900, 0.400" in notes[0]
    idx, notes = choose_candidate(_cands(0.9, 0.05), 0.1, "mug")
    assert idx == 0 and notes == []
    idx, notes = choose_candidate(_cands(0.9, 0.4, 0.05), 0.1, "mug", pick=1)
    assert idx == 1 and "--pick" in notes[0]
    with pytest.raises(HandlesError, match="--pick"):
        choose_candidate(_cands(0.9, 0.4, 0.05), 0.1, "mug", pick=2)


def test_owlv2_boxes_are_in_image_pixels(tiny_models, photo):
    det = TextDetector.load(SegmentConfig(detector_model=tiny_models["owlv2"], threshold=0.0))
    assert det.family == "owlv2" and det.threshold == 0.0
    cands = det.detect(photo, "a red square")
    assert 1 <= len(cands) <= 10
    scores = [c.score for c in cands]
    assert scores == sorted(scores, reverse=True)
    b = np.array([c.box for c in cands])
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 56).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 40).all()
    # The tiny model's boxes are its prior: one 14-pixel box per patch of a 4x4 grid over the
    # image padded to a 56x56 square (OWLv2 pads bottom/right), so corners lie at 7 + 14k pixels
    # in x *and* y (a wrong target size would scale y by 40/56), apart from clipping at the border.
    interior = b[(b != 0) & (b != 56) & ~((b == 40) & (np.arange(4) % 2 == 1))]
    assert interior.size >= 4
    assert np.allclose((interior - 7) / 14.0, np.round((interior - 7) / 14.0), atol=0.01)


def test_grounding_dino_boxes_are_in_image_pixels(tiny_models, photo):
    det = TextDetector.load(SegmentConfig(detector_model=tiny_models["grounding_dino"]))
    assert det.family == "grounding-dino" and det.threshold == 0.3
    cands = det.detect(photo, "The red mug")
    assert 1 <= len(cands) <= 10 and all(c.label == "The red mug" for c in cands)
    b = np.array([c.box for c in cands])
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 56).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 40).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert [c.score for c in cands] == sorted((c.score for c in cands), reverse=True)


# SamProcessor resizes the 56x40 test image to 64x46 (longest side 64): per-axis scale of prompts
SAM_XY = torch.tensor([64 / 56, 46 / 40])


def _fake_sam_forward(sam, masks_lowres, iou, seen):
    def forward(**kwargs):
        seen.update(kwargs)
        return SimpleNamespace(pred_masks=masks_lowres, iou_scores=iou)

    sam.model = type("FakeSam", (), {"dtype": torch.float32, "__call__": lambda self, **kw: forward(**kw)})()


def test_sam_box_prompt_is_rescaled_and_mask_is_resized_back(tiny_models, photo):
    sam = SamSegmenter.load(SegmentConfig(sam_model=tiny_models["sam"]))
    # real tiny SAM: runs end to end, gives a binary mask at the image's size
    mask, score = sam.mask_from_box(photo, (20, 12, 36, 28))
    assert mask.shape == (1, 1, 40, 56) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert np.isfinite(score)
    # plumbing: the box reaches the model in the processor's frame (longest side 56 -> 64) and
    # low-resolution logits (16x16 over the 64x64 padded input) come back at 40x56
    low = torch.full((1, 1, 1, 16, 16), -5.0)
    low[..., :, :8] = 5.0  # left half of the padded square = columns < 32 of 64 = < 28 of 56
    seen: dict = {}
    _fake_sam_forward(sam, low, torch.tensor([[[0.7]]]), seen)
    mask, score = sam.mask_from_box(photo, (20, 12, 36, 28))
    assert torch.allclose(seen["input_boxes"], torch.tensor([[[20, 12, 36, 28.0]]]) * SAM_XY.repeat(2), atol=0.05)
    assert seen["multimask_output"] is False
    assert mask.shape == (1, 1, 40, 56) and score == pytest.approx(0.7)
    cols = mask[0, 0].mean(0)  # fraction of object pixels per column
    assert bool((cols[:27] == 1).all()) and bool((cols[29:] == 0).all())


def test_sam_clicks_pick_best_proposal(tiny_models, photo):
    sam = SamSegmenter.load(SegmentConfig(sam_model=tiny_models["sam"]))
    low = torch.full((1, 1, 3, 16, 16), -5.0)
    low[0, 0, 1, 4:8, 4:8] = 5.0  # proposal 1: a block near the top left
    low[0, 0, 0] = 5.0  # proposal 0: everything
    seen: dict = {}
    _fake_sam_forward(sam, low, torch.tensor([[[0.2, 0.9, 0.5]]]), seen)
    mask, score = sam.mask_from_clicks(photo, [(10.0, 8.0)])
    assert seen["multimask_output"] is True and score == pytest.approx(0.9)
    assert torch.allclose(seen["input_points"], torch.tensor([[[[10.0, 8.0]]]]) * SAM_XY, atol=0.05)
    assert seen["input_labels"].tolist() == [[[1]]]
    assert 0 < mask.mean() < 0.2 and mask[0, 0, 20, 20] == 1  # block rows/cols 16..32 of 64 -> 14..28 of 56
    _fake_sam_forward(sam, low[:, :, :1], torch.tensor([[[0.3]]]), seen)
    mask, _ = sam.mask_from_clicks(photo, [(10.0, 8.0), (30.0, 20.0)])
    assert seen["multimask_output"] is False and seen["input_points"].shape == (1, 1, 2, 2)


def test_select_object_by_text_reports_several_matches_and_none(tiny_models, photo):
    cfg = SegmentConfig(detector_model=tiny_models["owlv2"], sam_model=tiny_models["sam"], threshold=0.0)
    det, sam = TextDetector.load(cfg), SamSegmenter.load(cfg)
    low = torch.full((1, 1, 1, 16, 16), 5.0)
    seen: dict = {}
    _fake_sam_forward(sam, low, torch.tensor([[[0.8]]]), seen)
    sel = select_object(photo, text="a red square", config=cfg, detector=det, sam=sam)
    assert sel.source == "text" and sel.chosen == 0 and len(sel.candidates) > 1
    assert "objects matched 'a red square'" in sel.notes[0]
    summary = sel.summary()
    assert summary["matched"] == len(sel.candidates) and summary["candidates"][0]["score"] >= summary["candidates"][1]["score"]
    # the chosen box is what SAM was prompted with
    assert torch.allclose(seen["input_boxes"][0, 0], torch.tensor(sel.candidates[0].box) * SAM_XY.repeat(2), atol=0.05)
    det.config = SegmentConfig(threshold=1.01)
    with pytest.raises(HandlesError, match="no object matched 'a red square'"):
        select_object(photo, text="a red square", config=cfg, detector=det, sam=sam)


def test_clicks_and_prompts_are_validated(tiny_models, photo):
    cfg = SegmentConfig(sam_model=tiny_models["sam"])
    with pytest.raises(HandlesError, match=r"--click: expected X,Y inside the 56x40 image"):
        select_object(photo, clicks=[(56.0, 3.0)], config=cfg)
    with pytest.raises(HandlesError, match="exactly one"):
        select_object(photo, config=cfg)
    with pytest.raises(HandlesError, match="exactly one"):
        select_object(photo, text="mug", clicks=[(1.0, 1.0)], config=cfg)
    assert parse_click(" 12.5, 7") == (12.5, 7.0)
    for bad in ["12", "a,b", "1,2,3", "nan,1"]:
        with pytest.raises(HandlesError, match="--click"):
            parse_click(bad)


def test_overlay_draws_mask_boxes_and_clicks(photo):
    from diffusion_handles.perception.segment import Selection

    mask = torch.zeros(1, 1, 40, 56)
    mask[..., 12:28, 20:36] = 1
    sel = Selection(mask=mask, source="text", candidates=_cands(0.9, 0.05), chosen=0, threshold=0.1, clicks=[(5.0, 5.0)])
    img = overlay_image(photo, mask, sel)
    assert img.shape == (40, 56, 3) and img.dtype == np.uint8
    base = (photo[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert not np.array_equal(img[20, 28], base[20, 28])  # tinted inside the mask
    assert np.array_equal(img[35, 50], base[35, 50])  # untouched far away
