"""``svi-torch train ... --nproc N``: start N workers through torchrun's own launcher.

The workers run ``python -m svi_torch train ...`` (without ``--nproc``) under
``torch.distributed.run`` in standalone mode (a local rendezvous on a free port), exactly
as ``torchrun --standalone --nproc_per_node N -m svi_torch train ...`` would. When a worker
dies, torchrun's agent stops the others; this turns its report into one line naming the
failed rank.
"""

from __future__ import annotations

import sys

__all__ = ["launch_workers"]


def launch_workers(nproc: int, worker_argv: list[str]) -> int:
    """Run ``svi_torch`` with ``worker_argv`` in ``nproc`` processes; return an exit status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        [
            "--standalone",
            f"--nproc_per_node={nproc}",
            "--max_restarts=0",
            "--monitor_interval=1",
            "--module",
            "svi_torch",
            *worker_argv,
        ]
    )
    try:
        run(args)
    except ChildFailedError as err:
        failures = sorted(err.failures.items())
        detail = "; ".join(
            f"rank {rank} failed with exit code {failure.exitcode}" for rank, failure in failures
        )
        print(f"svi-torch: distributed run failed: {detail}", file=sys.stderr)
        first_code = failures[0][1].exitcode if failures else 1
        return first_code if isinstance(first_code, int) and 0 < first_code < 126 else 1
    return 0
