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

from pipeline.cli import prog, run
from tood.config import load_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog(__spec__), description=__doc__.splitlines()[0])
    parser.add_argument(
        "--params", default="params.yaml", type=Path, help="params file (variants, alpha, beta)"
    )
    parser.add_argument("--metrics-dir", default="reports/metrics", type=Path, help="holds <variant>.json")
    parser.add_argument("--runs-dir", default="runs", type=Path, help="holds <variant>/seed<k>/losses.csv")
    parser.add_argument("--curves-dir", default=None, type=Path, help="<variant>.csv curves, if present")
    parser.add_argument("--out", default="reports/tables.md", type=Path, help="markdown tables to write")
    parser.add_argument("--summary", default="reports/summary.json", type=Path, help="summary JSON to write")
    parser.add_argument("--figures", default="reports/figures", type=Path, help="folder for the PNG figures")
    args = parser.parse_args(argv)
    from tood.report.results import ReportError
    from tood.report.tables import tabulate  # matplotlib: after parsing, so --help is fast

    try:
        params = load_params(args.params)  # a ConfigError goes to pipeline.cli.run: one line, exit 2
        tabulate(
            params, args.metrics_dir, args.runs_dir, args.out, args.summary, args.figures,
            where=str(args.params), curves_dir=args.curves_dir,
        )  # fmt: skip
    except ReportError as e:
        raise SystemExit(f"tabulate: error: {e}") from None  # one message, no traceback
    print(f"wrote {args.out}, {args.summary} and figures under {args.figures}")


if __name__ == "__main__":
    run(main)
