"""Helpers shared by the command-line tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from svi_torch.training import monitoring


@contextlib.contextmanager
def stopped_at(step: int, *, ctrl_c: bool = False) -> Iterator[None]:
    """Runs inside the block stop at logging step ``step``.

    ``ctrl_c=False``: a ``KeyboardInterrupt`` at once, as a kill would (no checkpoint at
    that step: a resume starts from the last periodic one). ``ctrl_c=True``: the SIGINT
    that Ctrl-C sends, after the step's logs; the run stops at the step boundary.
    """
    original = monitoring.TrainingMonitor.on_log

    def on_log(self, state, at, metrics):  # type: ignore[no-untyped-def]
        if at == step and not ctrl_c:
            raise KeyboardInterrupt
        original(self, state, at, metrics)
        if at == step and ctrl_c:
            os.kill(os.getpid(), signal.SIGINT)

    monitoring.TrainingMonitor.on_log = on_log  # type: ignore[method-assign]
    try:
        yield
    finally:
        monitoring.TrainingMonitor.on_log = original  # type: ignore[method-assign]


def get_json(url: str) -> object:
    """The JSON a URL answers with (ten seconds at most)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def tensorboard_server(
    logdir: Path,
    ready: Callable[[dict], bool],
    env: dict[str, str] | None = None,
    wait: float = 150,
) -> Iterator[str]:
    """``tensorboard --logdir logdir`` on a free local port; yields its URL.

    Waits until ``ready`` accepts the scalar tags it serves (``{run: {tag: ...}}``), or
    ``wait`` seconds; a server that exits early fails the test.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir)]
        + ["--port", str(port), "--host", "127.0.0.1", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            assert server.poll() is None, "tensorboard exited early"
            try:
                if ready(get_json(f"{url}/data/plugin/scalars/tags")):  # type: ignore[arg-type]
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
