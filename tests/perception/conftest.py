"""Tiny randomly initialised perception models, built in code and saved to local folders.

Each family (DPT, Depth Anything, ZoeDepth, OWLv2, SAM) gets a config with tiny hidden sizes,
is saved with ``save_pretrained`` and is loaded back by the tests through the project's real
loading path (:func:`diffusion_handles.hub.load_pretrained` with a folder).
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _empty_hub_cache(tmp_path_factory, monkeypatch):
    """Every test sees an empty hub cache, and no offline flag unless it sets one."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.getbasetemp() / "hf-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def _build_dpt(path):
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessorPil

    cfg = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
                    image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                    neck_hidden_sizes=[8, 16, 16, 32], fusion_hidden_size=16, use_auxiliary_head=False)
    DPTForDepthEstimation(cfg).save_pretrained(path)
    DPTImageProcessorPil(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(path)


def _build_depth_anything(path, metric: bool):
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessorPil,
    )

    backbone = Dinov2Config(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                            intermediate_size=37, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=32,
                              neck_hidden_sizes=[8, 16, 16, 32], fusion_hidden_size=16, head_hidden_size=8,
                              depth_estimation_type="metric" if metric else "relative", max_depth=20)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(path)
    DPTImageProcessorPil(size={"height": 28, "width": 28}, keep_aspect_ratio=False,
                         ensure_multiple_of=14).save_pretrained(path)


def _build_zoedepth(path):
    from transformers import (
        BeitConfig,
        ZoeDepthConfig,
        ZoeDepthForDepthEstimation,
        ZoeDepthImageProcessorPil,
    )

    backbone = BeitConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                          intermediate_size=37, use_relative_position_bias=True, reshape_hidden_states=False,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = ZoeDepthConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 16, 32], fusion_hidden_size=16,
                         num_relative_features=8, bottleneck_features=16, bin_embedding_dim=8,
                         num_attractors=[4, 4, 2, 1],
                         bin_configurations=[{"n_bins": 8, "min_depth": 0.001, "max_depth": 10.0}],
                         patch_transformer_hidden_size=16, patch_transformer_intermediate_size=16,
                         patch_transformer_num_attention_heads=2, num_patch_transformer_layers=1)
    ZoeDepthForDepthEstimation(cfg).save_pretrained(path)
    ZoeDepthImageProcessorPil(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(path)


def _build_sam(path):
    from transformers import (
        SamConfig,
        SamImageProcessorPil,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    vision = SamVisionConfig(hidden_size=16, output_channels=8, num_hidden_layers=2, num_attention_heads=2,
                             image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1],
                             num_pos_feats=4, mlp_dim=16)
    prompt = SamPromptEncoderConfig(hidden_size=8, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=8, mlp_dim=16, num_hidden_layers=1, num_attention_heads=2,
                                   iou_head_hidden_dim=8)
    SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)).save_pretrained(path)
    proc = SamImageProcessorPil(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16})
    SamProcessor(image_processor=proc).save_pretrained(path)


def _build_owlv2(path):
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessorPil,
        Owlv2Processor,
    )

    # a character-level CLIP BPE vocabulary; the special tokens get the largest ids, as in CLIP
    # (OWL pools the text at the end-of-text token, the highest id, and ignores queries whose
    # first id is 0)
    vocab: dict[str, int] = {}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    text = dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16, bos_token_id=len(vocab) - 2,
                eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1)
    vision = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=16))
    with torch.no_grad():  # boxes = the model's built-in prior: one box per 8x8 patch (a 4x4 grid)
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(path)
    Owlv2Processor(image_processor=Owlv2ImageProcessorPil(size={"height": 32, "width": 32}), tokenizer=tok).save_pretrained(path)


def _build_grounding_dino(path):
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
        SwinConfig,
    )

    backbone = SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1, 1], num_heads=[1, 1, 2],
                          window_size=2, out_indices=[2, 3])
    text = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=16, max_position_embeddings=32)
    cfg = GroundingDinoConfig(backbone_config=backbone, text_config=text, num_queries=10, encoder_layers=1,
                              decoder_layers=2, encoder_ffn_dim=16, decoder_ffn_dim=16, encoder_attention_heads=2,
                              decoder_attention_heads=2, d_model=32, num_feature_levels=2, encoder_n_points=2,
                              decoder_n_points=2, max_text_len=32)
    GroundingDinoForObjectDetection(cfg).save_pretrained(path)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *"abcdefghijklmnopqrstuvwxyz",
                                "mug", "red", "square", "the"]))
    tok = BertTokenizer(str(vocab))
    proc = GroundingDinoImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 48})
    GroundingDinoProcessor(image_processor=proc, tokenizer=tok).save_pretrained(path)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Folders of tiny random models: ``dpt``, ``depth_anything``, ``depth_anything_metric``,
    ``zoedepth``, ``sam``, ``owlv2``, ``grounding_dino``."""
    root = tmp_path_factory.mktemp("tiny-models")
    torch.manual_seed(0)
    builders = {
        "dpt": _build_dpt,
        "depth_anything": lambda p: _build_depth_anything(p, metric=False),
        "depth_anything_metric": lambda p: _build_depth_anything(p, metric=True),
        "zoedepth": _build_zoedepth,
        "sam": _build_sam,
        "owlv2": _build_owlv2,
        "grounding_dino": _build_grounding_dino,
    }
    out = {}
    for name, build in builders.items():
        (root / name).mkdir()
        build(root / name)
        out[name] = str(root / name)
    return out


@pytest.fixture()
def photo() -> torch.Tensor:
    """A ``(1, 3, 40, 56)`` image: a bright square on a gradient (deterministic)."""
    h, w = 40, 56
    y = torch.linspace(0, 1, h)[:, None].expand(h, w)
    x = torch.linspace(0, 1, w)[None, :].expand(h, w)
    img = torch.stack([0.2 + 0.5 * x, 0.3 + 0.4 * y, 0.5 * (1 - x)], 0)
    img[:, 12:28, 20:36] = torch.tensor([0.9, 0.2, 0.1])[:, None, None]
    return img[None].contiguous()


@pytest.fixture(scope="session")
def tiny_inpaint_pipeline(tmp_path_factory) -> str:
    """Folder of a tiny random ``StableDiffusionInpaintPipeline`` (UNet with 9 input channels:
    4 latent + 1 mask + 4 masked-image latent, as SD2 inpainting)."""
    from diffusers import StableDiffusionInpaintPipeline

    from diffusion_handles.diffusion.random_models import build_backbone_components, tiny_configs

    configs = tiny_configs()
    configs["unet"] = {**configs["unet"], "in_channels": 9}
    parts = build_backbone_components(configs, seed=0)
    pipe = StableDiffusionInpaintPipeline(**parts, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    path = tmp_path_factory.mktemp("tiny-models") / "sd-inpaint"
    pipe.save_pretrained(path)
    return str(path)
