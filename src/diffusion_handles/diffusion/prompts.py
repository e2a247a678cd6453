"""The generation's prompt of a restyle: the inversion's prompt with the object's words replaced.

A restyle (``DiffusionHandles.edit(..., restyle="a red striped sphere")``) changes what the
moved object looks like. Only the *conditional* text of the generation changes; the inversion's
null-text (or negative-prompt) embeddings stay, so the rest of the scene is still reconstructed
from them. :func:`restyle_prompt` is the one rule that turns the inversion's prompt into the
generation's.
"""

from __future__ import annotations

import re

from diffusion_handles.errors import HandlesError

OBJECTS_END = " on "  # "<objects> on <floor> ...": the TinyWorld caption grammar, and common English
OBJECTS_JOIN = " and "  # "<object> and <object>"


def object_phrases(prompt: str) -> list[str] | None:
    """The object phrases of ``prompt``: the part before the first ``" on "``, split at
    ``" and "`` (``"a red cube and a blue sphere on a grey floor ..."`` -> ``["a red cube",
    "a blue sphere"]``); ``None`` when the prompt has no ``" on "`` (the whole prompt is taken
    as the object's description)."""
    head, sep, _ = prompt.partition(OBJECTS_END)
    if not sep:
        return None
    return [p.strip() for p in head.split(OBJECTS_JOIN)]


def restyle_prompt(prompt: str, new: str, old: str | None = None) -> str:
    """``prompt`` with the object's words replaced by ``new``.

    Args:
        prompt: the inversion's prompt, e.g. ``"a red striped cube on a wooden floor by a grey wall"``.
        new: the object's new description, e.g. ``"a blue dotted cube"`` (not empty).
        old: the words of ``prompt`` that name the object (``restyle_words``); their first
            occurrence as whole words is replaced. ``None``: the object phrase found by :func:`object_phrases`
            when there is exactly one; the whole prompt when it has no ``" on "``.

    Raises:
        HandlesError: ``new`` empty (names ``restyle``); ``old`` not in ``prompt`` (names
            ``restyle_words``); several object phrases and no ``old`` (names ``restyle_words``).
    """
    if not isinstance(new, str) or not new.strip():
        raise HandlesError(f"restyle: expected the object's new description (e.g. 'a red striped sphere'), got {new!r}")
    new = new.strip()
    if old is not None:
        if not isinstance(old, str) or not old.strip():
            raise HandlesError(f"restyle_words: expected words of the prompt {prompt!r}, got {old!r}")
        found = re.search(r"(?<!\w)" + re.escape(old) + r"(?!\w)", prompt)  # whole words: "a cube" is not in "a tea cube"
        if found is None:
            raise HandlesError(f"restyle_words: expected words that occur in the prompt {prompt!r}, got {old!r}")
        return prompt[: found.start()] + new + prompt[found.end():]
    phrases = object_phrases(prompt)
    if phrases is None:
        return new
    if len(phrases) != 1:
        listed = ", ".join(repr(p) for p in phrases)
        raise HandlesError(f"restyle: the prompt {prompt!r} names {len(phrases)} objects ({listed}); pass "
                           "restyle_words with the words of the one to restyle")
    _, _, tail = prompt.partition(OBJECTS_END)
    lead = prompt[: len(prompt) - len(prompt.lstrip())]
    return lead + new + OBJECTS_END + tail
