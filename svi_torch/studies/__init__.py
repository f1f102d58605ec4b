"""Studies: grids of training runs with a summary table and plots (``svi-torch study NAME``).

A study is a function ``run(outdir: Path, quick: bool = False, overrides: dict | None = None)
-> Path`` registered in :data:`svi_torch.registry.STUDIES`; it writes ``summary.csv`` and
PNG plots under ``outdir`` (one TensorBoard run per grid point) and returns ``outdir``.
"""
