"""The documentation runs as written: every code block of README.md, docs/tutorial.md and
docs/api.md, in the order a reader meets them, in a fresh folder.

The library: Sybil (https://sybil.readthedocs.io). It was chosen over pytest-markdown-docs
(Python blocks only), mktestdocs (no markers in the Markdown source, one block at a time) and
phmdoctest (Python only, generates test files) because it does all that these docs need:
  * its Markdown lexer finds the fenced blocks by language, with their line numbers;
  * Python blocks run in order in one namespace per document;
  * a block that cannot run (a fragment) is marked in the Markdown source, where a reader sees
    it, with Sybil's own ``<!-- skip: next "the reason" -->``;
  * ``<!-- invisible-code-block: python ... -->`` runs set-up and checks of the numbers the
    prose quotes, beside that prose, without showing them on the rendered page;
  * a parser and an evaluator of one's own are a few lines: this file adds one for ```bash
    blocks and one for the ``<!-- not run in tests: ... -->`` note described below.
Sybil's own pytest plugin is not used: it collects the files that pytest walks into, and
pytest walks only tests/ (``testpaths``); and it runs each document on its own, where here the
README and the tutorial share one folder. So this file parses the documents with Sybil and
hands their blocks to pytest as one parametrised test, in document order.

The rules, for whoever edits the docs:
  * The README runs first, the tutorial straight after it in the same folder (the tutorial
    goes on from the README's runs); docs/api.md runs alone in a folder of its own. The folder
    is the current directory of Python blocks and of bash commands.
  * ```bash blocks: each line (a line ending in ``\\`` goes on to the next) runs with bash in
    that folder, the venv's ``npvae`` and ``python`` first on PATH, and must exit with 0;
    ``a && b`` runs a, then b. Comment lines are not run.
  * ``pip install ...``: not run. The project is installed already (editable, from this
    checkout) and installing it again would take minutes, need the network and change the
    environment under the running tests. Instead the command is checked: it must install this
    project (``.`` or ``.[extras]``, "." being the checkout the docs are read from), with
    extras the project declares, and every requirement of those extras must be installed at a
    version it allows, its Python modules importable. The test's output says so.
  * ``<!-- not run in tests: REASON -->`` right before a block (only other HTML comments and
    blank lines between) says the block is not run and why; the test reports it as skipped
    with that reason. With parts in backquotes, ``<!-- not run in tests: `--epochs 360`
    (30 minutes of training) -->``, only the commands (lines, or the parts of ``a && b``)
    that contain one of them, outside their ``#`` comment, are not run, and each part must
    match at least one command.
  * Run the whole file (``pytest tests/test_docs.py``), or with ``-k README`` the README
    alone: a block run alone (``-k``, ``--lf``) lacks what the blocks before it made.
  * Commands too slow for the suite (hours of training, Fashion-MNIST's 60,000 images for 10
    epochs, mpiexec, ln p(x) with K = 5000 over 10,000 images) carry that note. Blocks that
    need Debian's Fashion-MNIST skip with that reason when it is missing.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import SkipTest

import pytest
from helpers import check_pip_install

pytest.importorskip("sybil", reason="the docs tests need Sybil (the test extra)")
from sybil import Document, Region  # noqa: E402
from sybil.evaluators.python import PythonEvaluator  # noqa: E402
from sybil.evaluators.skip import Skipper  # noqa: E402
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent          # the venv's bin: npvae, python, mpiexec
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# Each sequence runs in one fresh folder, its documents in this order.
SEQUENCES = {
    "readme-then-tutorial": ("README.md", "docs/tutorial.md"),
    "api": ("docs/api.md",),
}


# ---------------------------------------------------------------- the not-run note

NOT_RUN = re.compile(r"^<!-- not run in tests: (?P<reason>.+?) -->", re.MULTILINE | re.DOTALL)
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


@dataclass
class NotRun:
    reason: str
    parts: list = field(default_factory=list)   # the backquoted parts: only those lines


def parse_not_run(document):
    for m in NOT_RUN.finditer(document.text):
        reason = " ".join(m.group("reason").split())
        yield Region(m.start(), m.end(), NotRun(reason, re.findall(r"`([^`]+)`", reason)), None)


# ---------------------------------------------------------------- bash blocks

@dataclass
class Bash:
    source: str
    not_run: NotRun | None = None


def logical_lines(source):
    """The block's commands: continuation lines joined, blank and comment lines dropped."""
    out, current = [], ""
    for line in source.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip() and not current.lstrip().startswith("#"):
            out.append(current.strip())
        current = ""
    if current.strip():
        out.append(current.strip())
    return out


def and_parts(line):
    """``a && b`` -> [a, b] (the docs' commands have no ``&&`` inside quotes)."""
    return [p.strip() for p in re.split(r"\s&&\s", line)]


def fashion_mnist_missing():
    return not FASHION_MNIST.is_dir() and not os.environ.get("NPVAE_DATA")


def run_bash(example):
    """Evaluator of a ```bash block: each command in the current folder, exit code 0."""
    block = example.parsed
    commands = []                                  # (command, not run)
    for line in logical_lines(block.source):
        for part in and_parts(line):
            words = " ".join(shlex.split(part, comments=True))   # the command without its comment
            commands.append((part, [p for p in (block.not_run.parts if block.not_run else ()) if p in words]))
    if block.not_run:
        stale = set(block.not_run.parts) - {p for _, hit in commands for p in hit}
        assert not stale, f"the not-run note names {sorted(stale)}, which no command of the block contains"
    needs_data = [c for c, hit in commands if not hit and "fashion-mnist" in c]
    if needs_data and fashion_mnist_missing():
        raise SkipTest(f"needs Debian's dataset-fashion-mnist ({FASHION_MNIST} is missing): {needs_data[0]}")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command, hit in commands:
        print(f"$ {command}")
        if hit:
            print(f"  not run in tests: {block.not_run.reason}")
        elif command.startswith("pip install"):
            print("  " + check_pip_install(command))
        else:
            start = time.perf_counter()
            proc = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True,
                                  timeout=900)
            print(f"  exit {proc.returncode} in {time.perf_counter() - start:.1f} s")
            if proc.returncode != 0:
                return (f"{command!r} exited with {proc.returncode} in {os.getcwd()}\n"
                        f"--- stdout (end)\n{proc.stdout[-3000:]}\n--- stderr (end)\n{proc.stderr[-3000:]}")


class BashParser(CodeBlockParser):
    def __init__(self):
        super().__init__(language="bash", evaluator=run_bash)

    def __call__(self, document):
        for region in super().__call__(document):
            region.parsed = Bash(str(region.parsed))
            yield region


def skip_block(reason):
    def evaluate(example):
        raise SkipTest(f"not run in tests: {reason}")
    return evaluate


# ---------------------------------------------------------------- documents -> pytest cases

PARSERS = [PythonCodeBlockParser(), BashParser(), SkipParser(), parse_not_run]


def parse(name):
    """The Sybil document, each not-run note joined to the block right after it."""
    document = Document.parse(str(ROOT / name), *PARSERS)   # (an absolute name stays itself)
    regions = [r for _, r in document.regions]
    for i, region in enumerate(regions):
        if not isinstance(region.parsed, NotRun):
            continue
        line = document.text.count("\n", 0, region.start) + 1
        nxt = regions[i + 1] if i + 1 < len(regions) else None
        gap = HTML_COMMENT.sub("", document.text[region.end:nxt.start] if nxt else "")
        if nxt is None or gap.strip() or isinstance(nxt.parsed, NotRun) or isinstance(nxt.evaluator, Skipper):
            raise ValueError(f"{name}, line {line}: a not-run note must come right before a code block")
        note = region.parsed
        if note.parts:
            if not isinstance(nxt.parsed, Bash):
                raise ValueError(f"{name}, line {line}: only a bash block's lines can be left out by parts")
            nxt.parsed.not_run = note
        else:
            nxt.evaluator = skip_block(note.reason)
    return document


@dataclass
class Case:
    sequence: str
    name: str
    document: Document | None
    examples: list          # directives (skip) first, then the block itself
    error: Exception | None = None

    @property
    def id(self):
        if self.error:
            return f"{self.name}:parse"
        example = self.examples[-1]
        kind = "bash" if isinstance(example.parsed, Bash) else "python"
        hidden = "invisible-" if "directive" in example.region.lexemes else ""
        return f"{self.name}:{example.line}:{hidden}{kind}"


def cases():
    out = []
    for sequence, names in SEQUENCES.items():
        for name in names:
            try:
                document = parse(name)
            except Exception as exc:  # a malformed marker: one failing case, not a broken collection
                out.append(Case(sequence, name, None, [], exc))
                continue
            pending = []
            for example in document.examples():
                if example.region.evaluator is None:          # a not-run note, already joined
                    continue
                pending.append(example)
                if not isinstance(example.region.evaluator, Skipper):
                    out.append(Case(sequence, name, document, pending))
                    pending = []
    return out


CASES = cases()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    made = {}

    def folder(sequence):
        if sequence not in made:
            made[sequence] = tmp_path_factory.mktemp(sequence)
        return made[sequence]
    return folder


# docs/api.md's diagnostics example trains on a random batch, where the posterior collapses
@pytest.mark.filterwarnings("ignore::npvae.diagnostics.PosteriorCollapseWarning")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_doc_block(case, folders, monkeypatch):
    if case.error:
        raise case.error
    monkeypatch.chdir(folders(case.sequence))
    try:
        for example in case.examples:
            if (isinstance(example.region.evaluator, PythonEvaluator)
                    and "load_fashion_mnist" in example.parsed and fashion_mnist_missing()):
                raise SkipTest(f"needs Debian's dataset-fashion-mnist ({FASHION_MNIST} is missing)")
            example.evaluate()
    except SkipTest as exc:
        pytest.skip(str(exc))


def test_the_markers_do_what_the_rules_say(tmp_path, monkeypatch, capsys):
    """This file's own parser and evaluator, on a small Markdown file."""
    doc = tmp_path / "doc.md"
    doc.write_text("""<!-- not run in tests: `sleep 1000` (too slow) -->
```bash
echo one > one.txt
echo zero > zero.txt && sleep 1000   # a comment
pip install ".[plot]" && echo two > two.txt
```

<!-- not run in tests: a whole block -->
```bash
exit 1
```

```python
done = open("two.txt").read().strip()
```
""")
    monkeypatch.chdir(tmp_path)
    examples = list(parse(doc).examples())
    runnable = [e for e in examples if e.region.evaluator is not None]
    assert len(runnable) == 3
    runnable[0].evaluate()
    out = capsys.readouterr().out
    assert "not run in tests: `sleep 1000` (too slow)" in out and "checked instead" in out
    assert all((tmp_path / f"{n}.txt").exists() for n in ("one", "zero", "two"))
    with pytest.raises(SkipTest, match="a whole block"):
        runnable[1].evaluate()
    runnable[2].evaluate()
    assert runnable[2].namespace["done"] == "two"

    doc.write_text("<!-- not run in tests: `nowhere` (stale) -->\n```bash\necho x\n```\n")
    with pytest.raises(AssertionError, match="nowhere"):
        [e for e in parse(doc).examples() if e.region.evaluator][0].evaluate()
    doc.write_text("<!-- not run in tests: misplaced -->\nSome prose.\n```bash\necho x\n```\n")
    with pytest.raises(ValueError, match="right before a code block"):
        parse(doc)
    doc.write_text("```bash\nfalse\n```\n")
    with pytest.raises(Exception, match="exited with 1"):
        [e for e in parse(doc).examples() if e.region.evaluator][0].evaluate()
