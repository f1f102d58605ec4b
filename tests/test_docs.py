"""Every code block of README.md and docs/ is a tested example (see ``docs_examples.py``).

Each block runs on its own; numbers in comments are ``# -> VALUE ± TOL`` assertions that
the run must meet, so a figure that drifts, or one that no command produces, fails here.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from docs_examples import ROOT, Block, ExampleError, all_blocks, run_block, run_python

#: Blocks that fail today, in sections whose owners will fix them; the owner empties this.
#: ``strict``: a block that starts passing fails the run until it is taken off the list.
EXPECTED_FAILURES: dict[str, str] = {}

#: Blocks that take more than ~20 s (CI still runs them).
SLOW: set[str] = {
    "README.md::Command line::1",  # six trainings and the after-fit commands, ~60 s
    "README.md::Studies::1",  # the quick scalability grid, ~40-70 s
    "README.md::Studies: KL asymmetry, mean-field, estimators::1",  # three quick studies, ~60 s
    "README.md::Scaling out::1",  # four data-parallel runs, ~70 s
    "README.md::Accuracy::1",  # the quick posteriordb benchmark, six fits, ~1-3 min
}

BLOCKS = all_blocks()


def _param(block: Block) -> object:
    marks = []
    if block.id in EXPECTED_FAILURES:
        marks.append(
            pytest.mark.xfail(reason=EXPECTED_FAILURES[block.id], strict=True, raises=Exception)
        )
    if block.id in SLOW:
        marks.append(pytest.mark.slow)
    return pytest.param(block, id=block.id, marks=marks)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_documentation_block_runs_and_its_numbers_hold(block: Block, tmp_path: Path) -> None:
    run_block(block, tmp_path)


def test_lists_name_existing_blocks() -> None:
    ids = {b.id for b in BLOCKS}
    assert not set(EXPECTED_FAILURES) - ids, set(EXPECTED_FAILURES) - ids
    assert not SLOW - ids, SLOW - ids


# -- the mechanism itself -------------------------------------------------------------------------
def _block(source: str) -> Block:
    return Block(ROOT / "README.md", 10, "python", textwrap.dedent(source), "test", 1)


def test_an_assertion_within_its_tolerance_passes(tmp_path: Path) -> None:
    run_python(
        _block(
            """
            import math
            x = 0.1 + 0.2
            x  # -> 0.3 ± 1e-12
            (math.pi, "pi", [1, 2])  # -> (3.1416 ± 0.0001, "pi", [1, 2])
            """
        ),
        tmp_path,
    )


def test_an_edited_number_fails(tmp_path: Path) -> None:
    with pytest.raises(ExampleError, match=r"gave 0\.3.*the text says 0\.31 ± 0\.001"):
        run_python(_block("x = 0.1 + 0.2\nx  # -> 0.31 ± 0.001\n"), tmp_path)


def test_a_number_in_a_plain_comment_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExampleError, match=r"the number 0\.0038 in the comment .* not checked"):
        run_python(_block("x = 1  # KL = 0.0038\n"), tmp_path)


def test_a_decimal_without_tolerance_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExampleError, match=r"state a tolerance for 0\.3"):
        run_python(_block("x = 0.3\nx  # -> 0.3\n"), tmp_path)


def test_blocks_do_not_share_names(tmp_path: Path) -> None:
    run_python(_block("shared = 1\n"), tmp_path)
    with pytest.raises(NameError):
        run_python(_block("shared  # -> 1\n"), tmp_path)


def test_an_assertion_after_a_statement_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExampleError, match="follows a statement"):
        run_python(_block("x = 2  # -> 2\n"), tmp_path)
