"""The documentation stays true: a short README, links that lead somewhere, references generated from the code.

* README.md is one page (at most 250 lines);
* every relative link in README.md and docs/*.md names an existing file, and an existing heading where it
  has ``#anchor`` (GitHub's heading slugs);
* docs/configuration.md and docs/cli.md are exactly what docs/generate.py writes from the code today (after a
  change to the config schema or the commands: ``.venv/bin/python docs/generate.py``);
* every key of the config schema appears in docs/configuration.md.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prose_lines(text: str, *, keep_code: bool = False) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked (or kept: a heading's slug
    includes its code text)."""
    out, fenced = [], False
    for no, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((no, line if keep_code else _CODE_SPAN.sub("", line)))
    return out


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = text.strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The heading anchors of a Markdown file, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8"), keep_code=True):
        m = re.match(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        out.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return out


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image in the file's prose that is not a URL (http, mailto, ...)."""
    return links_in(path.read_text(encoding="utf-8"))


def links_in(text: str) -> list[tuple[int, str]]:
    out = []
    for no, line in _prose_lines(text):
        for m in _LINK.finditer(line):
            target = m.group(1)
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                continue
            out.append((no, target))
    return out


def test_readme_is_one_page():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= 250, f"README.md has {n} lines; keep it at most 250 and move detail to docs/"


def test_slugs_follow_github():
    assert github_slug("On a dask.distributed cluster") == "on-a-daskdistributed-cluster"
    assert github_slug("Afterglow (ghost) removal") == "afterglow-ghost-removal"
    assert github_slug("flatfield.bad_pixels") == "flatfieldbad_pixels"
    assert github_slug("Characterisation: linearity, NNPS, DQE") == "characterisation-linearity-nnps-dqe"
    assert github_slug("xray-pipeline afterglow fit") == "xray-pipeline-afterglow-fit"


def test_link_finder_sees_links_and_skips_code():
    import textwrap

    text = textwrap.dedent("""\
        see [a](docs/a.md#x) and ![img](../b.png) and [web](https://example.org)
        `[not](code.md)`
        ```
        [not](fenced.md)
        ```
        """)
    assert links_in(text) == [(1, "docs/a.md#x"), (1, "../b.png")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for no, target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        dest = page if not file_part else (page.parent / file_part).resolve()
        if not dest.exists():
            broken.append(f"line {no}: {target} (no file {dest})")
            continue
        if anchor:
            if dest.suffix != ".md":
                broken.append(f"line {no}: {target} (an anchor into a file that is not Markdown)")
            elif anchor not in anchors(dest):
                broken.append(f"line {no}: {target} (no heading '#{anchor}' in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_pages_exist_and_are_linked_from_readme():
    targets = {t.partition("#")[0] for _, t in relative_links(README)}
    for page in sorted(DOCS.glob("*.md")):
        assert f"docs/{page.name}" in targets, f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize("name", ["configuration.md", "cli.md"])
def test_generated_pages_are_current(name):
    gen = _generator()
    expected = gen.PAGES[name]()
    actual = (DOCS / name).read_text(encoding="utf-8")
    assert actual == expected, (f"docs/{name} differs from what docs/generate.py makes from the code now; "
                                "run: .venv/bin/python docs/generate.py")


def _schema_keys(model, prefix=""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _schema_keys(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_every_config_key_is_documented():
    from pipeline.config import RunConfig

    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    keys = list(_schema_keys(RunConfig))
    assert len(keys) > 40
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, f"config keys missing from docs/configuration.md: {missing}"


def test_generator_is_deterministic():
    gen = _generator()
    assert gen.config_markdown() == gen.config_markdown()
    assert gen.cli_markdown() == gen.cli_markdown()


def test_the_wheel_lists_every_package():
    """pyproject.toml names the packages a wheel carries: every folder of pipeline/ with an __init__.py is one (an
    editable install works without them, an installed wheel would lack the missing ones)."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "pipeline").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
