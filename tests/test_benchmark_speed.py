"""Smoke test: ``benchmarks/speed.py --quick`` runs as a user runs it and prints its table."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_quick_speed_benchmark_prints_table_targets_and_command():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--quick", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "# svi_torch speed benchmark: python" in text and "--quick" in text
    rows = [line for line in text.splitlines() if re.match(r"\| (logreg|bnn) ", line)]
    # Two models x two families, each with svi_torch, hand and pyro timings and two ratios.
    assert len(rows) == 4
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        values = [float(c) for c in cells]
        assert len(values) == 5 and all(v > 0 and math.isfinite(v) for v in values), row
    assert "peak memory of a run" in text
    verdicts = re.findall(r"^\s+(PASS|FAIL)\s", text, flags=re.MULTILINE)
    assert len(verdicts) >= 7
    assert re.search(
        rf"{len(verdicts) - verdicts.count('FAIL')}/{len(verdicts)} targets pass", text
    )
    if sys.platform == "linux" and "THP_MEM_ALLOC_ENABLE" not in os.environ:
        # The N-scaling is measured again in a process with 2 MB pages.
        assert re.search(r"(PASS|FAIL)\s+the same with THP_MEM_ALLOC_ENABLE=1", text)
