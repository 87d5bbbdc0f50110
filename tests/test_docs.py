"""Every fenced ```python block of README.md and docs/**/*.md runs, top to bottom, one namespace per file;
the documentation site builds with ``mkdocs build --strict`` and every link and image in it resolves.

Blocks whose info string is ```python no-run are skipped; they must say why (text after ``no-run`` on
the fence line, or a ``#`` comment as their first line). Each file runs in a temporary working
directory with matplotlib's Agg backend and one torch thread; ``BSO_SNN_DATA`` points at the repository's
``data/`` folder when it exists, so pages may load the fetched MNIST / Fashion-MNIST.

The numbered tutorials (``docs/tutorials/NN-*.md``) also make their own figures: every image a tutorial
shows must be written by its code into the working directory, and a copy must be committed next to the
page (``python scripts/run_tutorials.py`` runs them in ``docs/tutorials/`` and refreshes the copies).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import traceback
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
TUTORIAL_DIR = DOCS / "tutorials"
TUTORIALS = sorted(TUTORIAL_DIR.glob("[0-9][0-9]-*.md"))
PAGES = sorted({REPO / "README.md", *DOCS.rglob("*.md")} - set(TUTORIALS))
IMAGE = re.compile(r"!\[[^\]]*\]\((?P<src>[^)\s]+)\)")
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
    import matplotlib.pyplot as plt
    import torch

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see conftest.one_thread: two threads on the shared 2-core machine are slower
    if (REPO / "data").is_dir() and "BSO_SNN_DATA" not in os.environ:
        monkeypatch.setenv("BSO_SNN_DATA", str(REPO / "data"))
    monkeypatch.chdir(tmp_path)
    yield
    plt.close("all")
    torch.set_num_threads(threads)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_page_python_blocks_run(page, docs_env):
    run_page(page)


def image_sources(page: Path) -> list[str]:
    """The relative paths of the images a Markdown page shows (``![alt](path)``)."""
    return [m["src"] for m in IMAGE.finditer(page.read_text()) if "://" not in m["src"]]


@pytest.mark.slow
@pytest.mark.parametrize("page", TUTORIALS, ids=[p.name for p in TUTORIALS])
def test_tutorial_runs_and_makes_the_figures_it_shows(page, docs_env, tmp_path, restore_registry):
    assert run_page(page) > 0, f"{page.name} has no python block to run"
    shown = image_sources(page)
    assert shown, f"{page.name} shows no figure; every tutorial makes and shows at least one"
    not_made = [src for src in shown if not (tmp_path / src).is_file()]
    assert not not_made, f"{page.name} shows {not_made} but its code did not write them"
    not_committed = [src for src in shown if not (page.parent / src).is_file()]
    assert not not_committed, (
        f"{page.name}: {not_committed} missing next to the page; run: python scripts/run_tutorials.py {page.name}"
    )


@pytest.mark.parametrize(
    "page", [*PAGES, *TUTORIALS], ids=[str(p.relative_to(REPO)) for p in [*PAGES, *TUTORIALS]]
)
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
    index = (DOCS / "index.md").read_text()
    unlinked = [
        p.name for p in PAGES if p.parent == DOCS and p.name != "index.md" and f"]({p.name})" not in index
    ]
    assert not unlinked, f"docs/index.md does not link {unlinked}"


def test_there_are_ten_numbered_tutorials_each_in_the_nav():
    numbers = [int(p.name[:2]) for p in TUTORIALS]
    assert numbers == list(range(1, 11)), f"expected tutorials 01..10 in docs/tutorials/, found {numbers}"
    nav = (REPO / "mkdocs.yml").read_text().split("\nnav:", 1)[1]
    missing = [p.name for p in TUTORIALS if f"tutorials/{p.name}" not in nav]
    assert not missing, f"mkdocs.yml's nav lacks {missing}"


def test_tutorial_index_links_every_tutorial():
    index = (TUTORIAL_DIR / "index.md").read_text()
    unlinked = [p.name for p in TUTORIALS if f"]({p.name})" not in index]
    assert TUTORIALS and not unlinked, f"docs/tutorials/index.md does not link {unlinked or 'any tutorial'}"


def test_home_page_has_the_readmes_two_commands():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    commands = [b.source for b in parse_blocks(section) if b.language == "bash"]
    assert len(commands) == 2, "README.md's 'Two commands' section should hold exactly two ```bash blocks"
    home = [b.source for b in parse_blocks((DOCS / "index.md").read_text()) if b.language == "bash"]
    missing = [c.strip() for c in commands if c not in home]
    assert not missing, f"docs/index.md lacks the README's command(s) {missing}; copy them verbatim"


# ---------------------------------------------------------------- the site


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site as ``mkdocs build --strict`` writes it (real mkdocs, mkdocs-material, mkdocstrings)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        f"mkdocs build --strict failed (exit {done.returncode}). Missing tools: pip install -e '.[docs]'. "
        f"A page not in mkdocs.yml's nav: add it there. Output:\n{done.stdout}\n{done.stderr}"
    )
    return out


class _Refs(HTMLParser):
    """The href/src attributes and the ids of one HTML file."""

    def __init__(self, path: Path):
        super().__init__()
        self.refs: list[str] = []
        self.ids: set[str] = set()
        self.feed(path.read_text(errors="replace"))

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.refs.append(value)
            elif name == "id" and value:
                self.ids.add(value)


def built_page(site: Path, page: Path) -> Path:
    """Where mkdocs writes ``page`` (docs/x/y.md -> site/x/y/index.html; docs/x/index.md -> site/x/index.html)."""
    rel = page.relative_to(DOCS).with_suffix("")
    return site / (rel.parent if rel.name == "index" else rel) / "index.html"


def test_site_has_every_page_and_tutorials_show_their_figures(site):
    missing = [str(p.relative_to(REPO)) for p in DOCS.rglob("*.md") if not built_page(site, p).is_file()]
    assert not missing, f"no built page for {missing}"
    for tutorial in TUTORIALS:
        html = _Refs(built_page(site, tutorial))
        shown = [ref for ref in html.refs if ref.endswith(".png")]
        assert len(shown) >= len(image_sources(tutorial)) > 0, (
            f"{tutorial.name}: its figures are not on the page"
        )


def broken_links(site: Path) -> list[str]:
    """Every relative href/src of every HTML file under ``site`` that names no file, or an #anchor no id."""
    site = site.resolve()
    parsed = {html.resolve(): _Refs(html) for html in site.rglob("*.html")}
    broken = []
    for html, refs in parsed.items():
        for ref in refs.refs:
            if re.match(r"^[a-z][a-z0-9+.-]*:", ref) or ref.startswith("//"):
                continue  # http(s):, mailto:, data: ... lie outside the site
            path, _, anchor = ref.split("?", 1)[0].partition("#")
            base = site if path.startswith("/") else html.parent  # 404.html links from the site's root
            target = (base / path.lstrip("/")).resolve() if path else html
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{html.relative_to(site)}: {ref} (no such file)")
            elif anchor and target.suffix == ".html" and anchor not in parsed[target].ids:
                broken.append(f"{html.relative_to(site)}: {ref} (no id {anchor!r})")
    return broken


def test_link_checker_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "index.html").write_text('<h2 id="x">x</h2><img src="../fig.png"><a href="#y">y</a>')
    (tmp_path / "index.html").write_text(
        '<a href="a/#x">ok</a><a href="a/#z">z</a><a href="https://e.org/">e</a>'
    )
    assert sorted(broken_links(tmp_path)) == [
        "a/index.html: #y (no id 'y')",
        "a/index.html: ../fig.png (no such file)",
        "index.html: a/#z (no id 'z')",
    ]
    (tmp_path / "fig.png").write_bytes(b"")
    assert len(broken_links(tmp_path)) == 2


def test_site_links_and_images_resolve(site):
    broken = broken_links(site)
    assert not broken, "broken links in the built site:\n" + "\n".join(broken)


def test_sphinx_roles_are_dropped_from_the_rendered_api_pages():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from mkdocs_hooks import strip_sphinx_roles
    finally:
        sys.path.remove(str(REPO / "scripts"))
    html = (
        "see :class:<code>BSO</code> and :func:<code>~bso_snn.optim.make_optimizer</code>, a:b <code>x</code>"
    )
    assert (
        strip_sphinx_roles(html)
        == "see <code>BSO</code> and <code>bso_snn.optim.make_optimizer</code>, a:b <code>x</code>"
    )
