"""Every code block of README.md and of the documentation pages (docs/*.md) runs, so the examples cannot rot.

One test per page; its blocks run in order, in a fresh directory (where ``tuning/``, ``benchmarks/``,
``sb3_ppo_variants/`` and ``docs/`` are linked from the repository, so commands read as a user types them from a clone):

- ``python`` blocks run in this process, in one namespace per page (a block may use the names of the blocks above it);
- ``bash`` blocks run in ``bash -e`` with this interpreter's ``bin/`` first on ``PATH`` (``python``, ``sb3pv-*``);
- a block with a title (```` ```yaml title="ppo.yml" ````) is written to that file for the blocks below it;
- ``text`` blocks are output or a sketch for the eye, never run.

Markers, HTML comments on the lines right above a block (visible in the Markdown source, not on the site):

- ``<!-- example: skip -- REASON -->``: the block does not run (an install, a server, the CI command itself);
- ``<!-- example: replace OLD -> NEW -->``: the block runs with OLD replaced by NEW (a budget cut for CI; an empty
  NEW deletes OLD); OLD must occur in the block, so a stale marker fails.

Any other block (a ``yaml`` without a title, an unknown language) fails its page's test until it is marked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINKED = ("tuning", "benchmarks", "sb3_ppo_variants", "docs")
RUN_LANGUAGES = ("python", "bash")
DISPLAY_LANGUAGES = ("text",)
#: Pages whose blocks are not run, with the reason. docs/benchmarks.md holds the benchmark commands themselves
#: (minutes to hours each); tests/test_benchmarks.py runs every script's --quick mode instead.
NOT_RUN = {
    "docs/benchmarks.md": "the benchmark commands (minutes to hours); tests/test_benchmarks.py runs their --quick modes",
}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_MARKER = re.compile(r"^\s*<!--\s*example:\s*(?P<body>.*?)\s*-->\s*$")
_COMMENT = re.compile(r"^\s*<!--.*-->\s*$")
_TITLE = re.compile(r"""title=(?:"([^"]*)"|'([^']*)'|(\S+))""")


@dataclass
class Block:
    """A fenced code block of a Markdown page, with its markers."""

    path: str
    line: int  # 1-based line of the opening fence
    language: str
    title: str | None
    code: str
    skip: str | None = None  # the reason, when marked skip
    replacements: list[tuple[str, str]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def runnable_code(self) -> str:
        """The code as it runs: each replacement applied (its OLD must occur in the block). In a bash block,
        continued lines (a backslash at the end) are joined first, so OLD may span them."""
        code = re.sub(r"[ \t]*\\\n[ \t]*", " ", self.code) if self.language == "bash" else self.code
        for old, new in self.replacements:
            if old not in code:
                raise ValueError(f"{self.where}: the marker 'replace {old} -> {new}' names text that is not in the block")
            code = code.replace(old, new)
        return code


def _marker(block: Block, body: str) -> None:
    if body == "skip" or body.startswith("skip "):
        reason = body[4:].strip().lstrip("-").strip()
        if not reason:
            raise ValueError(f"{block.where}: 'example: skip' needs a reason: <!-- example: skip -- REASON -->")
        block.skip = reason
    elif replace := re.match(r"^replace (?P<old>.+?) ->(?: (?P<new>.*))?$", body):
        block.replacements.append((replace["old"], replace["new"] or ""))
    else:
        raise ValueError(f"{block.where}: unknown marker {body!r}; use 'skip -- REASON' or 'replace OLD -> NEW'")


def parse_blocks(text: str, path: str = "<page>") -> list[Block]:
    """The fenced blocks of a Markdown text, in order, with the ``example:`` markers right above each."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        end = i + 1
        while end < len(lines):
            closing = _FENCE.match(lines[end])
            same_kind = closing and closing["fence"][0] == fence[0] and len(closing["fence"]) >= len(fence)
            if same_kind and closing and not closing["info"].strip():
                break
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{i + 1}: the code block opened here is never closed")
        body = [line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[i + 1 : end]]
        title = _TITLE.search(info)
        block = Block(
            path=path,
            line=i + 1,
            language=info.split()[0].lower() if info else "",
            title=next(g for g in title.groups() if g is not None) if title else None,
            code="\n".join(body) + "\n",
        )
        above = i - 1
        while above >= 0 and _COMMENT.match(lines[above]):
            above -= 1
        for comment in lines[above + 1 : i]:
            marker = _MARKER.match(comment)
            if marker:
                _marker(block, marker["body"])
        blocks.append(block)
        i = end + 1
    return blocks


def _pages() -> list[str]:
    pages = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
    return [p for p in pages if p not in NOT_RUN]


def _run_bash(block: Block, code: str, cwd: Path) -> None:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["MPLBACKEND"] = "Agg"
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    if result.returncode != 0:
        pytest.fail(
            f"{block.where}: the bash block exited with {result.returncode}\n--- code ---\n{code}\n"
            f"--- stdout (end) ---\n{result.stdout[-3000:]}\n--- stderr (end) ---\n{result.stderr[-3000:]}"
        )


def _run_python(block: Block, code: str, namespace: dict[str, Any]) -> None:
    try:
        # padded so that a traceback's line numbers are the page's
        exec(compile("\n" * block.line + code, block.path, "exec"), namespace)
    except Exception as error:
        raise AssertionError(f"{block.where}: the python block raised {type(error).__name__}: {error}") from error


def run_page(path: str, workdir: Path, root: Path = ROOT) -> list[Block]:
    """Run the blocks of the page ``root / path`` in order in ``workdir``; returns the blocks that ran."""
    blocks = parse_blocks((root / path).read_text(encoding="utf-8"), path)
    for name in LINKED:
        if (root / name).is_dir() and not (workdir / name).exists():
            (workdir / name).symlink_to(root / name, target_is_directory=True)
    namespace: dict[str, Any] = {"__name__": "__docs_example__"}
    ran: list[Block] = []
    with _registries_restored():
        _run_blocks(blocks, workdir, namespace, ran)
    return ran


@contextmanager
def _registries_restored() -> Iterator[None]:
    """The pages register loss terms (docs/extending.md): the registries are put back as they were afterwards, so that
    no other test of this process sees them (the python blocks run in this process)."""
    from sb3_ppo_variants import kl, losses

    tables = [losses.SURROGATES, *kl.SAMPLED_KL_ESTIMATORS.values()]
    saved = [dict(table) for table in tables]
    try:
        yield
    finally:
        for table, contents in zip(tables, saved):
            table.clear()
            table.update(contents)


def _run_blocks(blocks: list[Block], workdir: Path, namespace: dict[str, Any], ran: list[Block]) -> None:
    for block in blocks:
        if block.skip is not None:
            continue
        code = block.runnable_code()
        if block.title is not None:
            (workdir / block.title).parent.mkdir(parents=True, exist_ok=True)
            (workdir / block.title).write_text(code, encoding="utf-8")
        elif block.language == "python":
            _run_python(block, code, namespace)
        elif block.language == "bash":
            _run_bash(block, code, workdir)
        elif block.language in DISPLAY_LANGUAGES:
            continue
        else:
            pytest.fail(
                f"{block.where}: a {block.language or 'plain'} block is neither run ({RUN_LANGUAGES}), a file (title=...), "
                f"nor output ({DISPLAY_LANGUAGES}); mark it <!-- example: skip -- REASON --> if it is not meant to run"
            )
        ran.append(block)


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages())
def test_every_block_of_the_page_runs(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    run_page(page, tmp_path)


# The collector itself: what it runs, what it refuses.

PAGE = """\
Text.

<!-- example: skip -- installs a package -->
```bash
pip install something
```

<!-- example: replace 100_000 -> 64 -->
```python
steps = 100_000
```

```yaml title="conf/ppo.yml"
a: 1
```

```text
output
```
"""


def test_blocks_are_found_with_their_language_title_line_and_markers() -> None:
    blocks = parse_blocks(PAGE, "page.md")
    assert [(b.language, b.line, b.title, b.skip) for b in blocks] == [
        ("bash", 4, None, "installs a package"),
        ("python", 9, None, None),
        ("yaml", 13, "conf/ppo.yml", None),
        ("text", 17, None, None),
    ]
    assert blocks[1].runnable_code() == "steps = 64\n"
    (joined,) = parse_blocks("<!-- example: replace --a 1 --b 2 -> --a 3 -->\n```bash\ncmd --a 1 \\\n    --b 2\n```\n")
    assert joined.runnable_code() == "cmd --a 3\n"
    (deleting,) = parse_blocks("<!-- example: replace  && x -> -->\n```bash\ny && x && z\n```\n")
    assert deleting.runnable_code() == "y && z\n"
    assert blocks[2].code == "a: 1\n"


def test_a_page_runs_its_blocks_in_order_and_writes_titled_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "page.md"
    page.write_text(PAGE + '```python\nassert steps == 64\nassert open("conf/ppo.yml").read() == "a: 1\\n"\n```\n')
    monkeypatch.chdir(tmp_path)
    ran = run_page("page.md", tmp_path, root=tmp_path)
    assert [b.line for b in ran] == [9, 13, 20]  # the skipped bash (4) and the text output (17) do not run


def test_a_stale_replace_marker_fails() -> None:
    (block,) = parse_blocks("<!-- example: replace 200_000 -> 64 -->\n```python\nsteps = 100_000\n```\n", "page.md")
    message = "page.md:2: the marker 'replace 200_000 -> 64' names text that is not in the block"
    with pytest.raises(ValueError, match=re.escape(message)):
        block.runnable_code()


@pytest.mark.parametrize(
    ("marker", "message"),
    [("skip", "needs a reason"), ("run fast", "unknown marker 'run fast'")],
)
def test_malformed_markers_fail(marker: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_blocks(f"<!-- example: {marker} -->\n```python\npass\n```\n", "page.md")


def test_an_unmarked_block_of_another_language_fails(tmp_path: Path) -> None:
    (tmp_path / "page.md").write_text("```yaml\na: 1\n```\n")
    with pytest.raises(pytest.fail.Exception, match=re.escape("page.md:1: a yaml block is neither run")):
        run_page("page.md", tmp_path, root=tmp_path)


def test_a_failing_bash_block_names_its_page_and_line(tmp_path: Path) -> None:
    (tmp_path / "page.md").write_text("Intro.\n\n```bash\nfalse\n```\n")
    with pytest.raises(pytest.fail.Exception, match=re.escape("page.md:3: the bash block exited with 1")):
        run_page("page.md", tmp_path, root=tmp_path)


def test_terms_registered_by_a_page_are_unregistered_after_it(tmp_path: Path) -> None:
    from sb3_ppo_variants import kl, losses

    (tmp_path / "page.md").write_text(
        "```python\nfrom sb3_ppo_variants import kl, losses\n\n"
        'losses.register_surrogate("page_term", losses.unclipped_surrogate_loss)\n'
        'kl.register_kl_estimator("page_estimator", lambda log_ratio: -log_ratio, "reverse")\n```\n'
    )
    before = dict(losses.SURROGATES), {d: dict(t) for d, t in kl.SAMPLED_KL_ESTIMATORS.items()}
    run_page("page.md", tmp_path, root=tmp_path)
    assert (dict(losses.SURROGATES), {d: dict(t) for d, t in kl.SAMPLED_KL_ESTIMATORS.items()}) == before
