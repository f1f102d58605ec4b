"""What a TensorBoard user sees first, checked on a real run.

The run is the quickstart (``svi-torch train``), cut short. The event files are read back
with TensorBoard's own reader (tags, the Custom Scalars layout, the HParams data, the text
summary); a TensorBoard server is started on it and asked what its tabs show; and, where
Chromium is installed, the page is opened headless: the Time Series tab's groups are read
from the rendered page and screenshots of it and of the Custom Scalars tab are saved
(``SVI_TORCH_SCREENSHOTS=DIR`` copies them to DIR, e.g. ``docs/figures/tensorboard``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import get_json, tensorboard_server

from svi_torch.cli import main

STEPS = 300
LOG_EVERY = 50

#: The Time Series copies of the curves a reader should see first, in TensorBoard's order.
OVERVIEW = ["Overview/elbo", "Overview/kl_posterior", "Overview/variance_mean"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart as a user starts it, cut to a few hundred steps."""
    logdir = tmp_path_factory.mktemp("runs")
    args = ["train", "--logdir", str(logdir), "--quiet", "--set", f"train.steps={STEPS}"]
    # Gradient statistics more than once, so that no curve but the final numbers has one
    # point.
    args += ["--set", f"logging.grad_stats_every={2 * LOG_EVERY}"]
    assert main(args) == 0
    (run,) = logdir.iterdir()
    return run


@pytest.fixture(scope="module")
def events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _groups(tags: list[str]) -> list[str]:
    """Time Series groups (a tag's part before its first ``/``) in TensorBoard's order.

    TensorBoard sorts tags with its own comparison, which puts digits and ``/`` first and
    compares runs of digits as numbers; for names without digits that is the order of
    character codes, Python's. The assertion keeps the shortcut honest.
    """
    groups = sorted({tag.split("/", 1)[0] for tag in tags})
    assert not any(re.search(r"\d", g) for g in groups), groups
    return groups


def _layout(events) -> dict:
    from tensorboard.plugins.custom_scalar import layout_pb2

    (event,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    return {
        category.title: {chart.title: _chart_tags(chart) for chart in category.chart}
        for category in layout.category
    }


def _chart_tags(chart) -> list[str]:
    """A band chart's value, lower and upper tags, or a multi-line chart's patterns."""
    if chart.HasField("margin"):
        (series,) = chart.margin.series
        return [series.value, series.lower, series.upper]
    return list(chart.multiline.tag)


# -- the event files ----------------------------------------------------------------------
def test_time_series_opens_on_elbo_kl_and_variance(events) -> None:
    scalars = events.Tags()["scalars"]
    groups = _groups(scalars + events.Tags()["histograms"] + events.Tags()["images"])
    # TensorBoard expands the first two groups: the overview, then the ELBO with its band.
    assert groups[:2] == ["Overview", "elbo"]
    assert sorted(t for t in scalars if t.startswith("Overview/")) == OVERVIEW
    sources = ["elbo", "kl/posterior", "posterior/variance_mean"]
    for copy, source in zip(OVERVIEW, sources, strict=True):
        assert [(s.step, s.value) for s in events.Scalars(copy)] == [
            (s.step, s.value) for s in events.Scalars(source)
        ]


def test_custom_scalars_layout_draws_the_elbo_band_first(run_dir: Path, events) -> None:
    layout = _layout(events)
    # TensorBoard draws a section's multi-line charts before its band charts: the ELBO's
    # band chart has a section of its own, listed first.
    assert list(layout) == ["ELBO", "KL and posterior variance"]
    ((title, band),) = layout["ELBO"].items()
    assert "ELBO" in title and band == ["elbo/smoothed", "elbo/band_lower", "elbo/band_upper"]
    scalars = events.Tags()["scalars"]
    for tags in layout["KL and posterior variance"].values():
        # Every line of a multi-line chart (an anchored pattern) is a curve of the run.
        assert all(any(re.fullmatch(p.strip("^$"), t) for t in scalars) for p in tags), tags
    lower, smoothed, upper = (
        [s.value for s in events.Scalars(tag)]
        for tag in ("elbo/band_lower", "elbo/smoothed", "elbo/band_upper")
    )
    steps = json.loads((run_dir / "metrics.json").read_text())["steps"]
    assert len(smoothed) == steps // LOG_EVERY
    assert all(lo < m < hi for lo, m, hi in zip(lower, smoothed, upper, strict=True))


def test_end_of_run_numbers_sit_in_hparams_and_text_not_one_point_charts(
    run_dir: Path, events
) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    metrics = json.loads((run_dir / "metrics.json").read_text())
    scalars = events.Tags()["scalars"]
    one_point = [t for t in scalars if len(events.Scalars(t)) == 1]
    # The HParams tab reads its metrics as scalars: the only one-point series there are.
    assert one_point and all(t.startswith("hparam/") for t in one_point), one_point
    assert not [t for t in scalars if t.startswith("diagnostics/")]
    assert events.Scalars("hparam/khat")[0].value == pytest.approx(
        metrics["diagnostics/khat"], rel=1e-6
    )
    content = events.PluginTagToContent("hparams")["_hparams_/experiment"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    shown = {info.name.tag for info in experiment.metric_infos}
    assert {"hparam/elbo", "hparam/kl_posterior", "hparam/khat", "hparam/log_evidence_iw"} <= shown
    (text,) = events.Tensors("summary/text_summary")
    summary = text.tensor_proto.string_val[0].decode()
    assert run_dir.name in summary
    assert f"| PSIS k-hat | {metrics['diagnostics/khat']:.3f} ± " in summary
    assert f"{metrics['elbo']:.4f} ± {metrics['elbo_se']:.4f}" in summary


# -- the server and the browser -----------------------------------------------------------
@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[str]:
    """``tensorboard --logdir`` on the runs' parent, as the command line says to start it."""
    with tensorboard_server(
        run_dir.parent, lambda tags: "hparam/khat" in tags.get(run_dir.name, {})
    ) as url:
        yield url


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_tensorboard_serves_the_named_run_its_layout_and_text(run_dir: Path, server: str) -> None:
    assert get_json(f"{server}/data/runs") == [run_dir.name]
    layout = get_json(f"{server}/data/plugin/custom_scalars/layout")
    assert [c["title"] for c in layout["category"]] == ["ELBO", "KL and posterior variance"]
    texts = get_json(f"{server}/data/plugin/text/tags")
    assert texts == {run_dir.name: ["summary/text_summary"]}


def _chromium() -> str | None:
    return next(
        (p for p in map(shutil.which, ["chromium", "chromium-browser", "google-chrome"]) if p),
        None,
    )


def _browse(browser: str, url: str, profile: Path, *what: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url`` once its scripts have run (virtual time, no waiting)."""
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        + [f"--user-data-dir={profile}", "--window-size=1400,1000"]
        + ["--virtual-time-budget=20000", *what, url],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_page_shows_elbo_kl_and_variance_first(
    run_dir: Path, server: str, tmp_path: Path
) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium: the event files and the server were checked above")
    # TensorBoard's own switch to draw charts as SVG in the page: its WebGL charts are drawn
    # off the main thread, after the page counts as loaded, so a capture may find them
    # blank; SVG ones are in the page, and their curves can be read from it.
    url = f"{server}/?forceSVG=true"
    page = _browse(browser, url, tmp_path / "profile", "--dump-dom").stdout
    # The Time Series tab, as rendered: group headers in order, then the cards' curves.
    groups = [
        g for g in re.findall(r'class="group-title"[^>]*>\s*([^<\s]+)', page) if g != "Pinned"
    ]
    assert groups[:2] == ["Overview", "elbo"], f"Time Series groups read from the page: {groups}"
    logged = json.loads((run_dir / "metrics.json").read_text())["steps"] // LOG_EVERY
    ends = [*OVERVIEW[1:], 'title="elbo"']
    start = page.index('title="Overview"')
    for card, end in zip(OVERVIEW, ends, strict=True):
        start = page.index(card, start)
        html = page[start : page.index(end, start)]
        # The smoothed curve (opacity 1; the raw one behind it is faint): one vertex a log.
        curves = re.findall(r'<path d="(M[^"]+)" style="[^"]*opacity: 1;', html)
        assert [d.count("L") + 1 for d in curves] == [logged], (card, curves)
    assert run_dir.name in page  # the run's name, not "."
    shots = {
        "time_series.png": url,
        "custom_scalars.png": f"{server}/#custom_scalars",
    }
    keep = os.environ.get("SVI_TORCH_SCREENSHOTS")
    for name, url in shots.items():
        path = tmp_path / name
        _browse(browser, url, tmp_path / "profile", f"--screenshot={path}")
        assert path.stat().st_size > 20_000, f"{name} looks empty"
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / name)
