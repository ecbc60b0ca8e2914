"""The documentation holds together: links resolve, the set-up commands agree with CI, the
README stays a front page, and the MkDocs site builds strictly without assets from a CDN."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text without its fenced code blocks (a link there is code, not a link)."""
    return FENCE.sub("", text)


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown page's headings, as MkDocs (Python-Markdown's toc) makes them."""
    headings = HEADING.findall(prose(path.read_text(encoding="utf-8")))
    return {slugify(re.sub(r"[`*_]", "", h), "-") for h in headings}


def relative_links(path: Path) -> list[str]:
    links = LINK.findall(prose(path.read_text(encoding="utf-8")))
    return [link for link in links if not re.match(r"[a-z][a-z0-9+.-]*:", link)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file_and_anchor(page: Path) -> None:
    broken = []
    for link in relative_links(page):
        target, _, anchor = link.partition("#")
        resolved = (page.parent / target).resolve() if target else page
        if not resolved.exists():
            broken.append(f"{link}: no file {target}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{link}: {target or page.name} has no heading #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_checker_finds_a_broken_link_and_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A `code` title\n\n[ok](#a-code-title) [no](#nope) [gone](gone.md)\n"
                    "```\n[in code](nowhere.md)\n```\n", encoding="utf-8")
    assert anchors(page) == {"a-code-title"}
    assert relative_links(page) == ["#a-code-title", "#nope", "gone.md"]


def setup_commands(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    block = re.search(r"## Set-up: two commands.*?```bash\n(.*?)```", text, re.S)
    assert block, f"{path.name} has no set-up commands"
    return block.group(1).strip().splitlines()


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    install_and_demo, test = setup_commands(README)
    assert install_and_demo.endswith(".venv/bin/metamodal demo")
    assert "mkdocs build --strict" in test and ".[test,pretrained,docs]" in test
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == test
    assert setup_commands(DOCS / "getting-started.md") == [install_and_demo, test]


def test_the_readme_is_a_front_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 400
    for heading in ("## Set-up: two commands", "## The main job: `metamodal demo`",
                    "## Command line", "## Python API", "## Headline results", "## Limits"):
        assert heading in text
    linked = {Path(link.partition("#")[0]).name for link in relative_links(README)}
    pages = {p.name for p in DOCS.glob("*.md")}
    assert not pages - linked, f"docs pages the README does not link: {pages - linked}"


def test_every_docs_page_is_in_the_navigation() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    listed = set(re.findall(r":\s*(\S+\.md)\s*$", config, re.M))
    assert pages == listed


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None
                    or importlib.util.find_spec("mkdocstrings_handlers") is None,
                    reason="needs the docs extra: pip install -e '.[docs]'")
def test_the_site_builds_strictly_without_cdn_assets(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                           "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    html = {p: p.read_text(encoding="utf-8") for p in site.rglob("*.html")}
    remote = {str(p.relative_to(site)): url for p, text in html.items()
              for url in re.findall(r"<(?:script|img)[^>]*\bsrc=\"(https?://[^\"]+)\"", text)
              + re.findall(r"<link[^>]*\bhref=\"(https?://[^\"]+)\"", text)}
    assert not remote, f"assets from the network: {remote}"
    api = html[site / "reference" / "api.html"]
    assert 'id="metamodal.api' in api  # the reference is generated from the docstrings


def test_getting_started_shows_the_readmes_demo_output() -> None:
    def demo_output(path: Path) -> str:
        text = path.read_text(encoding="utf-8")
        found = re.search(r"Output of `metamodal demo` \(seed 0, 2-core CPU\):\n\n```\n(.*?)```",
                          text, re.S)
        assert found, f"{path.name} lost the demo's output"
        return found.group(1)

    readme = demo_output(README)
    assert "protonet+gated               87.88 ± 0.81  0.867          600" in readme
    assert demo_output(DOCS / "getting-started.md") == readme

