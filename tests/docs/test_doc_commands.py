"""Every command the docs mark offline runs as written.

Convention: a fenced code block whose info string is ``bash offline``

    ```bash offline
    handles world render --seed 3 --out scene
    ```

holds commands that run without hub access (no weights to download: ``--model tinyworld``,
given depth and masks, the renderer). Markdown renderers read the first word, ``bash``, as the
language, so the marker is invisible on the page. Blocks marked only ``bash`` are not run (hub
models, servers, long benchmarks).

This test runs the offline blocks of each ``docs/*.md`` page in order, in one temporary folder
per page, so a later block may use what an earlier one wrote. Per line (``\\`` continuations
joined, ``#`` comments dropped):

- ``handles ...``: run in-process through ``diffusion_handles.cli.main`` and must return 0. To
  keep the test fast, ``--preset fast`` (negative-prompt inversion, one gradient step),
  ``--steps 2`` and ``--spp 8`` (the renderer's samples per pixel) are each appended where the
  sub-command accepts the option and the line does not give it.
- ``cd DIR``, ``mkdir [-p] DIR``, ``echo 'TEXT' > FILE`` and ``cat > FILE <<'TAG'`` ... ``TAG``:
  done here.
- anything else fails the test: keep offline blocks to these forms.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
from pathlib import Path

import pytest

from diffusion_handles.cli import build_parser, main

DOCS = Path(__file__).resolve().parents[2] / "docs"
FENCE = re.compile(r"^```bash offline[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
# option -> value appended when a sub-command accepts the option and the line does not give it
FAST = {"--preset": "fast", "--steps": "2", "--spp": "8"}


def offline_blocks(text: str) -> list[str]:
    return [m.group(1) for m in FENCE.finditer(text)]


def logical_lines(block: str) -> list[str]:
    return block.replace("\\\n", " ").splitlines()


def _subparser(args: list[str]) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in args:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
    return parser


def with_fast_options(args: list[str]) -> list[str]:
    accepted = _subparser(args)._option_string_actions
    out = list(args)
    for option, value in FAST.items():
        if option in accepted and option not in args:
            out += [option, value]
    return out


def run_block(block: str, page: str, capsys) -> None:
    lines = iter(logical_lines(block))
    for line in lines:
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] == "handles":
            args = with_fast_options(words[1:])
            started = time.perf_counter()
            code = main(args)
            print(f"{time.perf_counter() - started:6.1f} s  handles {' '.join(args)}", file=sys.__stderr__)
            captured = capsys.readouterr()
            assert code == 0, f"{page}: `{line.strip()}` exited {code}:\n{captured.err[-2000:]}"
        elif words[0] == "cd" and len(words) == 2:
            os.chdir(words[1])
        elif words[0] == "mkdir":
            for d in (w for w in words[1:] if w != "-p"):
                Path(d).mkdir(parents=True, exist_ok=True)
        elif words[0] == "echo" and len(words) == 4 and words[2] == ">":
            Path(words[3]).write_text(words[1] + "\n")
        elif words[:2] == ["cat", ">"] and len(words) == 4 and words[3].startswith("<<"):
            tag = words[3][2:]
            body = []
            for body_line in lines:
                if body_line.strip() == tag:
                    break
                body.append(body_line)
            else:
                pytest.fail(f"{page}: heredoc {tag} is not closed")
            Path(words[2]).write_text("\n".join(body) + "\n")
        else:
            pytest.fail(f"{page}: offline block has a line this test cannot run: {line!r}")


PAGES = sorted(p for p in DOCS.glob("*.md") if offline_blocks(p.read_text()))


def test_some_pages_have_offline_blocks():
    names = {p.name for p in PAGES}
    assert {"getting-started.md", "editing.md"} <= names, names


@pytest.fixture(scope="module")
def one_model():
    """The commands share one loaded model per set of arguments (as a batch worker reuses its
    model), whose latent refinement after the encoder takes 2 steps instead of the model's 20: the
    commands' code paths are the same, with fewer iterations. The cache is this fixture's own (a
    model kept by an earlier test's ``keep_loaded_models`` is not reused)."""
    import diffusion_handles.diffusion.backbone as backbone_module

    real = backbone_module.Backbone.from_pretrained  # a staticmethod
    loaded: dict = {}

    def quick(*args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in loaded:
            loaded[key] = real(*args, **kwargs)
            loaded[key].encode_refine_steps = min(loaded[key].encode_refine_steps, 2)
        return loaded[key]

    mp = pytest.MonkeyPatch()
    mp.setattr(backbone_module.Backbone, "from_pretrained", staticmethod(quick))
    yield
    mp.undo()


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_offline_commands_run(page: Path, tmp_path, monkeypatch, capsys, one_model):
    monkeypatch.chdir(tmp_path)
    for block in offline_blocks(page.read_text()):
        run_block(block, page.name, capsys)


def test_parser_helpers():
    block = "handles edit a.png --prompt 'x y' \\\n    --out o  # note\n"
    (line,) = logical_lines(block)
    assert shlex.split(line, comments=True) == ["handles", "edit", "a.png", "--prompt", "x y", "--out", "o"]
    assert with_fast_options(["edit", "a.png", "--steps", "4"]).count("--steps") == 1
    assert with_fast_options(["edit", "a.png"])[-2:] == ["--steps", "2"]
    assert "--spp" in with_fast_options(["world", "render", "--out", "d"])
    assert "--steps" not in with_fast_options(["preview", "a.png"])
    text = "```bash offline\nhandles demo\n```\n\n```bash\nhandles serve\n```\n"
    assert offline_blocks(text) == ["handles demo\n"]
