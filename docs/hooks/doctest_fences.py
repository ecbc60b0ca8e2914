"""MkDocs hook: show docstring doctests as code in the API reference.

metamodal's docstrings put their runnable examples under ``Example:`` as plain doctest lines
(``>>> ...`` and the expected output), which Markdown would otherwise run together as a
paragraph, reading ``[a]\n[b]`` as a reference link. This hook adds a Markdown preprocessor
that wraps each run of doctest lines (from a ``>>>`` line to the next blank line) outside a
fenced block in a ``pycon`` fence. It runs for the pages and for the docstrings that
mkdocstrings renders (mkdocstrings reads the same list of Markdown extensions).
"""

from __future__ import annotations

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority

FENCES = ("```", "~~~")


class DoctestFences(Preprocessor):
    """Wrap runs of doctest lines in ```` ```pycon ```` fences."""

    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        fence = None
        i = 0
        while i < len(lines):
            line = lines[i]
            stripped = line.lstrip()
            if fence is not None:
                out.append(line)
                if stripped.startswith(fence):
                    fence = None
                i += 1
                continue
            if stripped.startswith(FENCES):
                fence = stripped[:3]
                out.append(line)
                i += 1
                continue
            if stripped.startswith(">>>"):
                indent = line[: len(line) - len(stripped)]
                block = []
                while i < len(lines) and lines[i].strip():
                    block.append(lines[i].removeprefix(indent))
                    i += 1
                out += ["", f"{indent}```pycon", *(indent + b for b in block), f"{indent}```", ""]
                continue
            out.append(line)
            i += 1
        return out


class DoctestFencesExtension(Extension):
    """Register :class:`DoctestFences` before the fenced-code preprocessors."""

    def extendMarkdown(self, md: Markdown) -> None:
        md.preprocessors.register(DoctestFences(md), "doctest_fences", 29)


@event_priority(100)  # before mkdocstrings reads the list of extensions
def on_config(config):
    config.markdown_extensions.append(DoctestFencesExtension())
    return config
