"""The code blocks of the documentation as tested examples (used by ``tests/test_docs.py``).

Sybil (a maintained documentation-testing library) finds the fenced blocks of each
Markdown file; this module says how each language is checked. Every block runs on its
own, in a fresh namespace and a scratch directory, so a block that leans on another
block's variables fails with ``NameError`` here as it would for a reader.

* ``python``: run statement by statement. A comment ``# -> EXPECTED`` (or ``# words ->
  EXPECTED``) after an expression is an assertion: the expression's value must equal ``EXPECTED``, a Python expression in
  which ``VALUE ± TOL`` stands for any number within ``TOL`` of ``VALUE``::

      kl.value  # -> 0.0012 ± 0.0005
      result.sample(1000)["beta"].shape  # -> torch.Size([1000, 5])

  A decimal number in any other comment is an error: a number a reader sees must be one
  the run produces and the test checks. Tensors compare as lists, one-element tensors as
  numbers.
* ``bash``: the block runs as one ``bash -euo pipefail`` script in the scratch directory
  (``experiments/`` linked there, the files of :data:`FILES` written there), with the
  placeholders of :data:`PLACEHOLDERS` replaced. ``make TARGET`` is a dry run (``make -n``): installing is the fresh-clone
  check's job (``tests/scripts/fresh_clone.sh``). A command with ``--nnodes N`` runs as
  ``N`` concurrent copies, the nodes of one job on this machine.
* ``yaml``: a config (or part of one): it must load, validate and build (model, family,
  objective, method) as ``svi-torch train`` would.
* A block without a language cannot be run, and fails.
"""

from __future__ import annotations

import ast
import io
import math
import os
import re
import subprocess
import sys
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sybil import Document
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

ROOT = Path(__file__).parents[1]
QUICK = ROOT / "experiments" / "configs" / "quick.yaml"

#: Placeholders of the shell examples and what the tests put in their place.
PLACEHOLDERS = {
    "CONFIG.yaml": str(QUICK),
    "runs/<run>": '"$(ls -td runs/*/ | head -n 1)"',
    "RUN_DIR": '"$(ls -td runs/*/ | head -n 1)"',
    "HOST:29400": "127.0.0.1:{free_port}",  # a port free on this machine when the block runs
}

#: Files a reader would bring (their own data), written into the scratch directory.
FILES = {"new.csv": "x1,x2,x3\n0.0,0.0,0.0\n1.0,-1.0,2.0\n"}

_NUMBER = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?"
_PLUS_MINUS = re.compile(rf"(?P<value>{_NUMBER})\s*±\s*(?P<tol>{_NUMBER})")
# A decimal number (0.0038, -701.79, 1e-3, 2.5e4) that is not part of a name or a version.
_DECIMAL = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)(?![\w.])")
# ``# -> EXPECTED`` or ``# words -> EXPECTED``: the arrow after the hash or a space.
_ASSERTION = re.compile(r"(?:^#|\s)->\s*(?P<expected>.+?)\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced code block: where it is and what it holds."""

    path: Path
    line: int
    language: str
    source: str
    section: str
    index: int  # 1-based position among the blocks of its section

    @property
    def id(self) -> str:
        """``README.md::Quickstart in Python::1``: stable while other sections change."""
        return f"{self.path.relative_to(ROOT)}::{self.section}::{self.index}"


def doc_files() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of ``path``, each with the heading of its section."""
    lexer = RawFencedCodeBlockLexer(
        info_pattern=re.compile(r"(?P<language>[^\n]*)$\n", re.MULTILINE),
        mapping={"language": "language", "source": "source"},
    )
    document = Document.parse(str(path), lexer)
    text = document.text
    found: list[Block] = []
    counts: dict[str, int] = {}
    previous_end = 0
    section = "(top)"
    for example in document.examples():
        # Headings between the previous block and this one (never a "#" inside a block).
        for heading in re.finditer(r"^#{1,6} (.+)$", text[previous_end : example.start], re.M):
            section = heading.group(1).strip()
        previous_end = example.end
        counts[section] = counts.get(section, 0) + 1
        found.append(
            Block(
                path=path,
                line=example.line,
                language=example.region.lexemes["language"].strip(),
                source=str(example.region.lexemes["source"]),
                section=section,
                index=counts[section],
            )
        )
    return found


def all_blocks() -> list[Block]:
    return [block for path in doc_files() for block in blocks(path)]


# -- python ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Within:
    """Equal to any real number within ``tol`` of ``value`` (the ``±`` of an assertion)."""

    value: float
    tol: float

    def __eq__(self, other: object) -> bool:
        if isinstance(other, bool) or not isinstance(other, int | float):
            return NotImplemented
        return math.isfinite(other) and abs(other - self.value) <= self.tol

    def __hash__(self) -> int:
        return hash((self.value, self.tol))

    def __repr__(self) -> str:
        return f"{self.value} ± {self.tol}"


class ExampleError(AssertionError):
    """A documentation example that does not do what its text says."""


def plain(value: Any) -> Any:
    """Tensors and arrays as lists (one element: a number), containers recursively."""
    if hasattr(value, "tolist") and callable(value.tolist) and hasattr(value, "shape"):
        return value.tolist()
    if type(value) is tuple:  # not torch.Size or a named tuple: they compare as they are
        return tuple(plain(v) for v in value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def expected_value(text: str, namespace: dict[str, Any], where: str) -> Any:
    """The value an assertion's text stands for; every decimal number needs its ``± tol``."""
    bare = _DECIMAL.findall(_PLUS_MINUS.sub("", text))
    if bare:
        raise ExampleError(f"{where}: state a tolerance for {bare[0]} (write {bare[0]} ± TOL)")
    source = _PLUS_MINUS.sub(lambda m: f"_Within({m['value']}, {m['tol']})", text)
    try:
        return eval(source, {**namespace, "_Within": Within})  # noqa: S307 (our own docs)
    except Exception as err:
        raise ExampleError(f"{where}: cannot read the assertion {text!r}: {err}") from None


def _comments(source: str) -> dict[int, str]:
    """Comment text by (1-based) line of ``source``."""
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string
    return comments


def run_python(block: Block, cwd: Path) -> None:
    """Run a python block on its own and check its ``# ->`` assertions (module docstring)."""
    offset = block.line  # the block's first source line is line ``block.line + 1``
    where = f"{block.path.name}:{block.line}"
    comments = _comments(block.source)
    assertions: dict[int, str] = {}
    for line, comment in comments.items():
        match = _ASSERTION.search(comment)
        if match:
            assertions[line] = match["expected"]
            comment = comment[: match.start()]  # the words before the arrow
        numbers = _DECIMAL.findall(comment)
        if numbers:
            raise ExampleError(
                f"{block.path.name}:{offset + line}: the number {numbers[0]} in the comment "
                f"{comment!r} is not checked; write the expression and `# -> VALUE ± TOL`"
            )
    tree = ast.parse(block.source, filename=str(block.path))
    ast.increment_lineno(tree, offset)
    namespace: dict[str, Any] = {"__name__": "__docs_example__"}
    checked = set()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        for statement in tree.body:
            end = (statement.end_lineno or statement.lineno) - offset
            expected = assertions.get(end)
            if expected is None:
                code = compile(ast.Module([statement], []), str(block.path), "exec")
                exec(code, namespace)  # noqa: S102 (our own docs)
                continue
            checked.add(end)
            if not isinstance(statement, ast.Expr):
                raise ExampleError(
                    f"{block.path.name}:{offset + end}: `# ->` follows a statement, not an "
                    "expression"
                )
            code = compile(ast.Expression(statement.value), str(block.path), "eval")
            actual = eval(code, namespace)  # noqa: S307
            wanted = expected_value(expected, namespace, f"{block.path.name}:{offset + end}")
            if plain(actual) != wanted:
                text = ast.get_source_segment(block.source, _shifted(statement.value, -offset))
                raise ExampleError(
                    f"{block.path.name}:{offset + end}: `{text}` gave {plain(actual)!r}, "
                    f"the text says {expected}"
                )
    finally:
        os.chdir(previous)
    stray = sorted(set(assertions) - checked)
    if stray:
        raise ExampleError(
            f"{where}: `# ->` on line {offset + stray[0]} is not at the end of a top-level "
            "expression"
        )


def _shifted(node: ast.AST, lines: int) -> ast.AST:
    """A copy of ``node``'s position, moved by ``lines`` (for ``get_source_segment``)."""
    copy = ast.Expr(value=node)
    copy.lineno, copy.end_lineno = node.lineno + lines, (node.end_lineno or node.lineno) + lines
    copy.col_offset, copy.end_col_offset = node.col_offset, node.end_col_offset
    return copy


# -- bash -------------------------------------------------------------------------------------
def shell_script(source: str) -> str:
    """The block as the script the test runs: placeholders replaced, ``make`` dry-run."""
    lines = []
    port = str(_free_port())
    for line in source.replace("\\\n", " ").splitlines():
        for placeholder, value in PLACEHOLDERS.items():
            line = line.replace(placeholder, value.replace("{free_port}", port))
        line = re.sub(r"^(\s*)make ", rf"\1make -n -C {ROOT} ", line)
        nodes = re.search(r"--nnodes\s+(\d+)", line)
        if nodes and not line.lstrip().startswith("#"):
            command = line.split(" #")[0]
            copies = range(int(nodes[1]))
            line = " ".join(f"( {command} ) & node{i}=$!;" for i in copies)
            line += " " + " && ".join(f"wait $node{i}" for i in copies)  # each one's status
        lines.append(line)
    return "\n".join(lines)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_shell(block: Block, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a bash block (module docstring); raise :class:`ExampleError` unless it succeeds."""
    # Blocks name the repository's configs and benchmark scripts by relative paths.
    for folder in ("experiments", "benchmarks"):
        link = cwd / folder
        if not link.exists():
            link.symlink_to(ROOT / folder)
    for name, text in FILES.items():
        (cwd / name).write_text(text)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    # `svi-torch` and `python` are this interpreter's (the package under test).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    script = "set -euo pipefail\n" + shell_script(block.source)
    proc = subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise ExampleError(
            f"{block.path.name}:{block.line}: the shell block exited {proc.returncode}:\n{tail}"
        )
    return proc


# -- yaml ---------------------------------------------------------------------------------------
def check_yaml(block: Block) -> None:
    """A YAML block is a config (or part of one) that loads, validates and builds."""
    from svi_torch.build import build
    from svi_torch.config import ConfigError, config_from_dict, load_yaml

    try:
        raw = load_yaml(block.source)
        build(config_from_dict(raw or {}))
    except ConfigError as err:
        raise ExampleError(
            f"{block.path.name}:{block.line}: the config is refused: {err}"
        ) from None


def run_block(block: Block, cwd: Path) -> None:
    """Check one block by its language (module docstring)."""
    if block.language == "python":
        run_python(block, cwd)
    elif block.language == "bash":
        run_shell(block, cwd)
    elif block.language == "yaml":
        check_yaml(block)
    else:
        raise ExampleError(
            f"{block.path.name}:{block.line}: a block without a runnable language "
            f"({block.language or 'none'}) cannot be tested; mark it python, bash or yaml"
        )


def iter_ids(items: list[Block]) -> Iterator[str]:
    yield from (b.id for b in items)
