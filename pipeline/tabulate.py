"""`tabulate` stage: paper vs ours -> reports/tables.md, reports/summary.json, reports/figures/*.png.

    python -m pipeline.tabulate --params params.yaml --metrics-dir reports/metrics --runs-dir runs \
        --out reports/tables.md --summary reports/summary.json --figures reports/figures

The variants come from params.yaml (tood.config.variant_names), never from a glob of the metrics folder,
each with its own seeds (`variants.<name>.seeds` or the top-level `seeds`). A top-level `trial: true`
puts "supports no conclusions" at the top of tables.md.
Loss curves: runs/<variant>/seed<k>/losses.csv, or <curves-dir>/<variant>.csv (with a `seed` column when
it holds several seeds) where --curves-dir is given and that file exists.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tood.config import ConfigError, load_params
from tood.report import tabulate
from tood.results import ReportError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--metrics-dir", default="reports/metrics", type=Path)
    parser.add_argument("--runs-dir", default="runs", type=Path, help="holds <variant>/seed<k>/losses.csv")
    parser.add_argument("--curves-dir", default=None, type=Path, help="<variant>.csv curves, if present")
    parser.add_argument("--out", default="reports/tables.md", type=Path)
    parser.add_argument("--summary", default="reports/summary.json", type=Path)
    parser.add_argument("--figures", default="reports/figures", type=Path)
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        tabulate(
            params, args.metrics_dir, args.runs_dir, args.out, args.summary, args.figures,
            where=str(args.params), curves_dir=args.curves_dir,
        )  # fmt: skip
    except (ConfigError, ReportError) as e:
        raise SystemExit(f"tabulate: error: {e}") from None  # one message, no traceback
    print(f"wrote {args.out}, {args.summary} and figures under {args.figures}")


if __name__ == "__main__":
    main()
