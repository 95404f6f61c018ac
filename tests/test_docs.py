"""The documentation: the README's size, links that resolve, demo prompts the demo model knows,
and the test command CI runs shown in the README."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdrt.models.demo.scenes import COLOURS, POSITIONS, SHAPES, SIZES, describe, parse

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_LIMIT = 12288  # bytes: the README is the front page; everything else lives in docs/

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SRC = re.compile(r"""\b(?:src|href)=["']([^"']+)["']""")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_GENERATE = re.compile(r"""\bsdrt generate\s+"([^"]*)"([^`\n]*)""")


def _prose(text: str) -> str:
    """`text` without its fenced code blocks (links there are examples, not links)."""
    return _FENCE.sub("", text)


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub makes for a Markdown file's headings."""
    anchors: set[str] = set()
    for heading in _HEADING.findall(_prose(path.read_text(encoding="utf-8"))):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def _links(path: Path) -> list[str]:
    prose = _prose(path.read_text(encoding="utf-8"))
    return _LINK.findall(prose) + _SRC.findall(prose)


def test_readme_is_at_most_12_kib():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, (f"README.md is {size} bytes, over {README_LIMIT}: move sections to "
                                  "docs/ and link them")


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(page):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target} (no heading makes #{anchor})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {', '.join(broken)}"


def _demo_vocabulary() -> set[str]:
    """Every word of every caption the demo model was trained on (scenes.describe's template)."""
    phrases = ["a shape on a background", *SHAPES, *COLOURS, *SIZES, *POSITIONS.values()]
    return {word for phrase in phrases for word in phrase.split()}


def _demo_prompts() -> list[tuple[str, str]]:
    """(page, prompt) of every `sdrt generate "..."` without --artifact: those run the demo model."""
    found = []
    for page in (README, ROOT / "docs" / "image-tasks.md"):
        text = page.read_text(encoding="utf-8").replace("\\\n", " ")  # join continued shell lines
        for prompt, rest in _GENERATE.findall(text):
            if "--artifact" not in rest:
                found.append((page.name, prompt))
    return found


def test_there_are_demo_examples_to_check():
    pages = {page for page, _ in _demo_prompts()}
    assert pages == {"README.md", "image-tasks.md"}, pages


@pytest.mark.parametrize("page, prompt", _demo_prompts())
def test_demo_examples_use_captions_the_demo_model_knows(page, prompt):
    unknown = sorted(set(prompt.lower().split()) - _demo_vocabulary())
    assert not unknown, f"{page}: {prompt!r} has words the demo model never saw: {', '.join(unknown)}"
    if prompt.strip():
        stated = parse(prompt)
        assert describe(stated) == prompt, (f"{page}: {prompt!r} is not in the demo captions' template, "
                                            f"which says {describe(stated)!r}")
        assert stated.get("colour") is None or stated["colour"] != stated.get("background"), \
            f"{page}: {prompt!r}: no training scene has a shape of its background's colour"


def test_readme_shows_both_test_tiers():
    lines = {line.strip() for line in README.read_text(encoding="utf-8").splitlines()}
    for command in (".venv/bin/python -m pytest -q", '.venv/bin/python -m pytest -q -m "full_size or slow"'):
        assert command in lines, f"README.md lacks the line {command!r}"


def test_readme_shows_the_test_command_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = [line.strip() for line in ci if line.strip().startswith(".venv/bin/python -m pytest")]
    if not commands:
        pytest.skip(".ci/run runs no `.venv/bin/python -m pytest` line")
    lines = {line.strip() for line in README.read_text(encoding="utf-8").splitlines()}
    assert commands[-1] in lines, \
        f"README.md does not show .ci/run's test command {commands[-1]!r} on a line of its own"


def test_the_readmes_demo_size_step_is_what_sdrt_info_prints(capsys):
    """The size step is the model's own: the README's figure for the demo model is the one its
    manifest holds and `sdrt info` prints."""
    import json

    from sdrt.cli import main
    from sdrt.models.demo import demo_artifact

    step = json.loads((demo_artifact() / "sdrt.json").read_text())["pipeline"]["size_multiple"]
    assert main(["info", str(demo_artifact())]) == 0
    assert f"size step {step}" in capsys.readouterr().out
    prose = " ".join(README.read_text(encoding="utf-8").split())
    assert re.search(rf"\b{step} px for the demo model\b", prose), "README.md states another size step for the demo"
