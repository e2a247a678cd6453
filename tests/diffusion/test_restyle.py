"""A restyle (``edit(..., restyle=...)``): the prompt rule and the text the UNet sees.

Which bugs this catches: the object's words replaced in the wrong place (the floor's, a second
object's, the whole prompt when only one phrase should go), a prompt with several objects
restyled by guess, a restyle that silently does nothing (the UNet still sees the old prompt), a
restyle that also replaces the unconditional branch (the null-text embeddings that reconstruct
the scene), a negative-prompt inversion whose restyle loses its negative (the old prompt), an edit
without a restyle whose text changed, and a restyle accepted where it has no meaning (a camera
move, a removal, several objects).
"""

from __future__ import annotations

import pytest
import torch

from diffusion_handles.diffusion.config import InversionConfig
from diffusion_handles.diffusion.prompts import object_phrases, restyle_prompt
from diffusion_handles.errors import HandlesError
from diffusion_handles.geometry import HandleEdit
from diffusion_handles.pipeline import CameraMove, ObjectMove
from diffusion_handles.stages import EditRequest

CAPTION = "a red striped cube on a wooden floor by a grey wall lit from the front left"
TWO = "a red striped cube and a blue sphere on a wooden floor by a grey wall lit from the front left"
PROMPT = "a box on a grey floor by a wall"
MOVE = HandleEdit(translate=(0.1, 0.0, 0.0))


# ---- the prompt rule ------------------------------------------------------------------------
def test_one_object_phrase_is_replaced_and_the_rest_kept():
    assert restyle_prompt(CAPTION, "a blue dotted cube") == \
        "a blue dotted cube on a wooden floor by a grey wall lit from the front left"
    assert object_phrases(CAPTION) == ["a red striped cube"]


def test_given_words_replace_their_first_occurrence_only():
    assert restyle_prompt(TWO, "a green checkered sphere", "a blue sphere") == \
        "a red striped cube and a green checkered sphere on a wooden floor by a grey wall lit from the front left"
    assert restyle_prompt("a cube and a cube on a floor", "a red cube", "a cube") == "a red cube and a cube on a floor"
    assert restyle_prompt("a tea cube and a cube on a floor", "a red cube", "a cube") == \
        "a tea cube and a red cube on a floor"  # whole words only


def test_given_words_missing_from_the_prompt_are_refused_with_both_texts():
    with pytest.raises(HandlesError, match=r"restyle_words: expected words that occur in the prompt "
                                           r"'a red striped cube.*got 'a yellow cone'"):
        restyle_prompt(CAPTION, "a blue cube", "a yellow cone")


def test_several_objects_without_words_are_refused_and_listed():
    with pytest.raises(HandlesError, match=r"names 2 objects \('a red striped cube', 'a blue sphere'\).*restyle_words"):
        restyle_prompt(TWO, "a blue dotted cube")
    assert object_phrases(TWO) == ["a red striped cube", "a blue sphere"]


def test_a_prompt_without_on_is_replaced_whole():
    assert object_phrases("a photo of a mug") is None
    assert restyle_prompt("a photo of a mug", "a photo of a glass mug") == "a photo of a glass mug"


@pytest.mark.parametrize("new", ["", "   ", None])
def test_an_empty_description_is_refused(new):
    with pytest.raises(HandlesError, match="restyle: expected the object's new description"):
        restyle_prompt(CAPTION, new)


# ---- the text the UNet sees -----------------------------------------------------------------
def _texts_seen(handles, monkeypatch, run):
    """Run ``run()`` and return the text embeddings of every UNet call it made."""
    seen: list[torch.Tensor] = []
    real = handles.backbone.unet_eval

    def spy(latent, t, text, depth_cond):
        seen.append(text.detach().clone())
        return real(latent, t, text, depth_cond)

    monkeypatch.setattr(handles.backbone, "unet_eval", spy)
    out = run()
    monkeypatch.undo()
    return out, seen


def _is(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b.to(a)))


@pytest.fixture(scope="module")
def null_text_inverted(handles, scene):
    image, depth, mask = scene
    return handles.invert(image, PROMPT, depth, mask, inversion=InversionConfig(num_steps=3, null_inner_steps=1))


@pytest.fixture(scope="module")
def negative_inverted(handles, scene):
    image, depth, mask = scene
    return handles.invert(image, PROMPT, depth, mask, inversion=InversionConfig(num_steps=3, method="negative-prompt"))


def test_restyle_conditions_on_the_new_prompt_and_keeps_the_null_text(handles, null_text_inverted, monkeypatch):
    inv = null_text_inverted
    new = handles.backbone.encode_prompt("a red striped box on a grey floor by a wall")
    out, seen = _texts_seen(handles, monkeypatch, lambda: handles.edit(inv, MOVE, restyle="a red striped box"))
    nulls = [inv.null_embeddings[i : i + 1] for i in range(inv.null_embeddings.shape[0])]
    assert out.prompt == "a red striped box on a grey floor by a wall"
    assert not _is(new, inv.text_embedding)  # the test can tell the two prompts apart
    assert any(_is(t, new) for t in seen)  # the conditional branch: the new prompt
    assert not any(_is(t, inv.text_embedding) for t in seen)  # never the old prompt
    assert any(_is(t, n) for t in seen for n in nulls)  # the unconditional branch: the null text, kept
    assert all(_is(t, new) or any(_is(t, n) for n in nulls) for t in seen)


def test_without_restyle_the_unet_sees_the_inversions_text_only(handles, null_text_inverted, monkeypatch):
    inv = null_text_inverted
    out, seen = _texts_seen(handles, monkeypatch, lambda: handles.edit(inv, MOVE))
    nulls = [inv.null_embeddings[i : i + 1] for i in range(inv.null_embeddings.shape[0])]
    assert out.prompt == PROMPT
    assert seen and all(_is(t, inv.text_embedding) or any(_is(t, n) for n in nulls) for t in seen)
    assert any(_is(t, inv.text_embedding) for t in seen)


def test_restyle_of_a_negative_prompt_inversion_keeps_the_old_prompt_as_the_negative(handles, negative_inverted,
                                                                                     monkeypatch):
    inv = negative_inverted
    assert inv.null_embeddings is None  # one branch without a restyle
    new = handles.backbone.encode_prompt("a blue box on a grey floor by a wall")
    out, seen = _texts_seen(handles, monkeypatch, lambda: handles.edit(inv, MOVE, restyle="a blue box"))
    assert any(_is(t, new) for t in seen) and any(_is(t, inv.text_embedding) for t in seen)
    assert all(_is(t, new) or _is(t, inv.text_embedding) for t in seen)
    assert bool(torch.isfinite(out.edited).all())


def test_restyle_words_pick_the_object(handles, null_text_inverted):
    out = handles.edit(null_text_inverted, MOVE, restyle="a glass box", restyle_words="a box")
    assert out.prompt == "a glass box on a grey floor by a wall"
    with pytest.raises(HandlesError, match="restyle_words"):
        handles.edit(null_text_inverted, MOVE, restyle="a glass box", restyle_words="a cone")


def test_restyle_is_refused_where_it_has_no_meaning(handles, null_text_inverted, scene):
    _, _, mask = scene
    inv = null_text_inverted
    with pytest.raises(HandlesError, match="restyle: .*a camera move"):
        handles.edit(inv, CameraMove(MOVE), restyle="a red box")
    with pytest.raises(HandlesError, match="restyle: .*several-object"):
        handles.edit(inv, [ObjectMove(mask, MOVE)], restyle="a red box")
    with pytest.raises(HandlesError, match="restyle: expected the object's new description"):
        handles.edit(inv, MOVE, restyle="  ")
    with pytest.raises(HandlesError, match="restyle_words: expected only with restyle"):
        handles.edit(inv, MOVE, restyle_words="a box")
    with pytest.raises(HandlesError, match="restyle: .*a removal"):
        EditRequest("remove", restyle="a red box")
