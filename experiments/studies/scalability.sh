#!/usr/bin/env bash
# Run the default scalability study (about ten minutes on 2 idle CPU cores) and copy its
# plots to docs/figures/scalability/, where the README shows them. The grids are defined in
# svi_torch/configs/scalability.yaml (shipped with the package); override any setting with
# --set, e.g.  experiments/studies/scalability.sh --set steps=1000
set -euo pipefail
cd "$(dirname "$0")/../.."
outdir=$(python -m svi_torch study scalability --logdir runs/studies --quiet "$@")
mkdir -p docs/figures/scalability
cp "$outdir"/*.png "$outdir"/summary.csv docs/figures/scalability/
echo "study: $outdir"
echo "figures: docs/figures/scalability/"
