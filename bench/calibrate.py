"""Calibrate the `shapes` default: what the detector learns (AP) and the seed noise, against data and budget.

Every cell of the study is params.yaml with some keys overridden (`--set key=v1,v2,...`; several --set
give their cartesian product); each (cell, variant, seed) is trained with tood.engine.train.train on a dataset
generated for the cell's `shapes` section, evaluated on its val split with tood.engine.inference, and appended
as one row to the study's CSV (a re-run skips the rows it has: a killed study continues). `--report`
turns the CSV into a markdown table (mean ± std over seeds, the SE of each variant's mean and of the
difference to a reference variant) and a figure of AP against one swept key.

    .venv/bin/python -m bench.calibrate --study floor --set shapes.min_side_px=4,8,16 \
        --set shapes.num_train=512 --variants tood,parallel_atss --seeds 0,1,2
    .venv/bin/python -m bench.calibrate --study floor --report --x shapes.min_side_px

Datasets, runs and a private MLflow store live under --work (default /tmp/tood-calibration); only the CSV,
the markdown and the figure are kept in bench/calibration/. Overrides may name any params.yaml key,
e.g. optim.lr, train.epochs, shapes.max_objects, model.pretrained (a `pretrain` stage checkpoint), seeds
are given by --seeds. One training at a time: the machine has 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import itertools
import json
import math
import os
import statistics
import time
from pathlib import Path

import yaml

OUT_DIR = Path(__file__).resolve().parent / "calibration"
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def parse_sets(items: list[str]) -> list[tuple[str, list]]:
    """["a.b=1,2", "c=x"] -> [("a.b", [1, 2]), ("c", ["x"])], values parsed as YAML scalars."""
    out = []
    for item in items:
        key, _, values = item.partition("=")
        if not key or not values:
            raise SystemExit(f"--set {item!r}: expected key=value[,value...]")
        out.append((key.strip(), [yaml.safe_load(v) for v in _split_top_level(values)]))
    return out


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: "1,[96,96]" -> ["1", "[96,96]"]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def apply_override(params: dict, key: str, value) -> dict:
    """A copy of params with the dotted `key` set (top-level keys: alpha, beta, seeds, ...)."""
    params = copy.deepcopy(params)
    *parents, leaf = key.split(".")
    node = params
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return params


def cells(sets: list[tuple[str, list]]) -> list[dict]:
    keys = [k for k, _ in sets]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in sets))]


def dataset_root(work: Path, shapes_cfg) -> Path:
    """Generate (once) the dataset of a `shapes` config under work/data/<hash of the config>."""
    import dataclasses

    from tood.data.shapes import generate

    key = hashlib.sha256(json.dumps(dataclasses.asdict(shapes_cfg), sort_keys=True).encode()).hexdigest()[:12]
    root = work / "data" / key
    if not (root / "done").exists():
        generate(shapes_cfg, root)
        (root / "done").write_text(json.dumps(dataclasses.asdict(shapes_cfg)) + "\n")
    return root


def run_one(params: dict, variant: str, seed: int, work: Path, where: str) -> dict:
    """Train and evaluate one (cell, variant, seed); returns its metrics and cost."""
    from tood.config import resolve_run_config
    from tood.engine.inference import evaluate_checkpoint
    from tood.engine.train import train

    cfg = resolve_run_config(params, variant, where=where)
    root = dataset_root(work, cfg.shapes)
    tag = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    out_dir = work / "runs" / f"{variant}-{tag}" / f"seed{seed}"
    start = time.perf_counter()
    summary = train(cfg, seed, out_dir, data_root=root)
    metrics = evaluate_checkpoint(cfg, out_dir / "last.pt", data_root=root)
    return {
        **{k: metrics[k] for k in METRICS},
        "iterations": summary["iterations"],
        "train_time_s": round(summary["train_time_s"], 1),
        "wall_s": round(time.perf_counter() - start, 1),
    }


def run_study(args: argparse.Namespace) -> None:
    from tood.config import load_params

    base = load_params(args.params)
    csv_path = OUT_DIR / f"{args.study}.csv"
    done = {_row_key(r) for r in _read_rows(csv_path)}
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{args.work / 'mlflow.db'}")
    args.work.mkdir(parents=True, exist_ok=True)
    for cell in cells(parse_sets(args.set)):
        params = base
        for key, value in cell.items():
            params = apply_override(params, key, value)
        for variant, seed in itertools.product(args.variants.split(","), _ints(args.seeds)):
            row = {"cell": json.dumps(cell, sort_keys=True), "variant": variant, "seed": seed}
            if _row_key(row) in done:
                continue
            row |= run_one(params, variant, seed, args.work, where=f"{args.params} + {cell}")
            _append_row(csv_path, row)
            print(f"{args.study}: {cell} {variant} seed {seed}: AP {100 * row['AP']:.1f} ({row['wall_s']} s)")


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",")]


def _row_key(row: dict) -> tuple:
    return row["cell"], row["variant"], int(row["seed"])


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


# ---------------------------------------------------------------------------------------------------
# report


def summarise(rows: list[dict], reference: str | None) -> list[dict]:
    """Per (cell, variant): n, mean, std and SE of AP (x100); and Δ ± SE to `reference` in the same cell."""
    groups: dict[tuple[str, str], list[float]] = {}
    iterations: dict[tuple[str, str], int] = {}
    for r in rows:
        groups.setdefault((r["cell"], r["variant"]), []).append(100 * float(r["AP"]))
        iterations[r["cell"], r["variant"]] = int(r["iterations"])
    out = []
    for (cell, variant), aps in groups.items():
        mean, std = statistics.fmean(aps), statistics.stdev(aps) if len(aps) > 1 else math.nan
        entry = {"cell": cell, "variant": variant, "n": len(aps), "mean": mean, "std": std}
        entry["iterations"] = iterations[cell, variant]
        entry["se"] = std / math.sqrt(len(aps))
        ref = groups.get((cell, reference)) if reference and variant != reference else None
        if ref:
            ref_std = statistics.stdev(ref) if len(ref) > 1 else math.nan
            entry["delta"] = mean - statistics.fmean(ref)
            entry["delta_se"] = math.sqrt(std**2 / len(aps) + ref_std**2 / len(ref))
        out.append(entry)
    return out


def write_report(args: argparse.Namespace) -> None:
    rows = _read_rows(OUT_DIR / f"{args.study}.csv")
    if not rows:
        raise SystemExit(f"no rows in {OUT_DIR / args.study}.csv")
    stats = summarise(rows, args.reference)
    lines = [
        f"# Calibration study `{args.study}`",
        "",
        (
            "AP on the study's shapes val split (0-100), mean ± std over seeds; SE = std / sqrt(n); "
            f"Δ = variant − `{args.reference}` in the same cell, SE(Δ) = sqrt(sa²/na + sb²/nb)."
        ),
        "",
        "| cell | variant | iterations | n | AP mean ± std | SE | Δ ± SE(Δ) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in stats:
        delta = f"{s['delta']:+.2f} ± {s['delta_se']:.2f}" if "delta" in s else "—"
        lines.append(
            f"| `{s['cell']}` | {s['variant']} | {s['iterations']} | {s['n']} | {s['mean']:.2f} ± {s['std']:.2f} | "
            f"{s['se']:.2f} | {delta} |"
        )
    (OUT_DIR / f"{args.study}.md").write_text("\n".join(lines) + "\n")
    if args.x:
        keys = args.label_keys.split(",") if args.label_keys else None
        plot(stats, args.x, OUT_DIR / f"{args.study}.png", args.study, keys)
    print("\n".join(lines))


def plot(stats: list[dict], x_key: str, path: Path, title: str, label_keys: list[str] | None) -> None:
    """AP mean ± SE against a swept key (or "iterations"), one line per variant and the values of
    `label_keys` (default: every other key of the cell)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines: dict[str, list[tuple[float, float, float]]] = {}
    for s in stats:
        cell = json.loads(s["cell"])
        keys = label_keys if label_keys is not None else [k for k in cell if k != x_key]
        label = " ".join([s["variant"], *(f"{k.split('.')[-1]}={cell.get(k, 'base')}" for k in keys)])
        x = s["iterations"] if x_key == "iterations" else float(cell[x_key])
        lines.setdefault(label, []).append((x, s["mean"], 0.0 if math.isnan(s["se"]) else s["se"]))
    fig = Figure(figsize=(8, 4.5 + 0.18 * len(lines)))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, points in sorted(lines.items()):
        xs, ys, es = zip(*sorted(points))
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label)
    ax.set_xlabel(x_key)
    ax.set_ylabel("AP (0-100), mean ± SE over seeds")
    ax.set_title(f"calibration: {title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="name: bench/calibration/<study>.csv|md|png")
    parser.add_argument("--params", default="params.yaml", help="base params file")
    parser.add_argument("--set", action="append", default=[], help="key=v1,v2,... (repeat for a product)")
    parser.add_argument("--variants", default="tood", help="comma-separated params.yaml variants")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tood-calibration"), help="datasets and runs")
    parser.add_argument("--report", action="store_true", help="summarise the CSV instead of running")
    parser.add_argument(
        "--x", default=None, help="with --report: the swept key (or 'iterations') for the x axis"
    )
    parser.add_argument(
        "--label-keys", default=None, help="with --report: comma-separated cell keys naming each line"
    )
    parser.add_argument("--reference", default="parallel_atss", help="with --report: Δ baseline variant")
    args = parser.parse_args(argv)
    write_report(args) if args.report else run_study(args)


if __name__ == "__main__":
    main()
