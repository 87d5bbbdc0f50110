"""Every fenced ```python block of README.md and docs/*.md runs, top to bottom, one namespace per file.

Blocks whose info string is ```python no-run are skipped; they must say why (text after ``no-run`` on
the fence line, or a ``#`` comment as their first line). Each file runs in a temporary working
directory with matplotlib's Agg backend; ``BSO_SNN_DATA`` points at the repository's ``data/`` folder
when it exists, so pages may load the fetched MNIST / Fashion-MNIST.
"""

from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>.*)$")


@dataclass
class Block:
    line: int  # 1-based line number of the opening fence
    info: str  # the info string, e.g. "python" or "python no-run (needs a GPU)"
    source: str

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def no_run(self) -> bool:
        return self.language == "python" and "no-run" in self.info.split()[1:2]

    @property
    def no_run_reason(self) -> str:
        tail = self.info.split("no-run", 1)[1].strip() if self.no_run else ""
        first = next((ln.strip() for ln in self.source.splitlines() if ln.strip()), "")
        return tail or (first if first.startswith("#") else "")


def parse_blocks(text: str) -> list[Block]:
    """Fenced code blocks (``` or ~~~, any length >= 3) with their opening line numbers."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent, start, body = m["fence"], len(m["indent"]), i + 1, []
        i += 1
        while i < len(lines) and not (
            lines[i].strip().startswith(fence) and set(lines[i].strip()) == {fence[0]}
        ):
            line = lines[i]
            body.append(line[indent:] if line[:indent].isspace() or not indent else line.lstrip())
            i += 1
        blocks.append(Block(start, m["info"].strip(), "\n".join(body) + "\n"))
        i += 1
    return blocks


class DocBlockError(AssertionError):
    pass


def run_page(path: Path) -> int:
    """Execute the runnable python blocks of ``path`` in one namespace; returns how many ran."""
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for block in parse_blocks(path.read_text()):
        if block.language != "python" or block.no_run:
            continue
        # Pad so that tracebacks show the Markdown file's own line numbers.
        code = compile("\n" * block.line + block.source, str(path), "exec")
        try:
            exec(code, namespace)
        except Exception as exc:
            tb = "".join(traceback.format_exception(exc)[-6:])
            raise DocBlockError(
                f"{path.name}: python block at line {block.line} failed: {exc!r}\n{tb}"
            ) from exc
        ran += 1
    return ran


@pytest.fixture
def docs_env(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import torch

    torch.manual_seed(0)
    if (REPO / "data").is_dir() and "BSO_SNN_DATA" not in os.environ:
        monkeypatch.setenv("BSO_SNN_DATA", str(REPO / "data"))
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_page_python_blocks_run(page, docs_env):
    run_page(page)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_no_run_blocks_say_why(page):
    silent = [b.line for b in parse_blocks(page.read_text()) if b.no_run and not b.no_run_reason]
    assert not silent, (
        f"{page.name}: ```python no-run blocks at lines {silent} give no reason; "
        "add it after no-run on the fence line or as a # comment on the block's first line"
    )


# ---------------------------------------------------------------- the runner itself

SAMPLE = """# Title
text
```python
x = 1
```
```bash
exit 1
```
```python no-run  (would fail: needs a GPU)
raise RuntimeError
```
  ~~~~python
  y = x + 1
  ~~~~
```python
for k in range(2):
    assert y == 2
z = undefined_name
```
"""


def test_parser_finds_blocks_languages_and_line_numbers():
    blocks = parse_blocks(SAMPLE)
    assert [(b.line, b.language, b.no_run) for b in blocks] == [
        (3, "python", False),
        (6, "bash", False),
        (9, "python", True),
        (12, "python", False),
        (15, "python", False),
    ]
    assert blocks[2].no_run_reason == "(would fail: needs a GPU)"
    assert blocks[3].source == "y = x + 1\n"
    assert blocks[4].source.splitlines()[1] == "    assert y == 2"  # indentation kept


def test_runner_shares_a_namespace_and_reports_file_and_line(tmp_path):
    page = tmp_path / "sample.md"
    page.write_text(SAMPLE)
    with pytest.raises(DocBlockError, match=r"sample.md: python block at line 15 failed: NameError") as info:
        run_page(page)
    assert "line 18" in str(info.value)  # the traceback points at the Markdown line of the bad statement


def test_pages_are_found():
    assert REPO / "README.md" in PAGES and len(PAGES) >= 2


def test_index_links_every_page():
    index = (REPO / "docs" / "index.md").read_text()
    unlinked = [
        p.name
        for p in PAGES
        if p.parent.name == "docs" and p.name != "index.md" and f"]({p.name})" not in index
    ]
    assert not unlinked, f"docs/index.md does not link {unlinked}"
