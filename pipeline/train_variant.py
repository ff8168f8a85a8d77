"""Stage `train@<variant>`: train every seed of one params.yaml variant into runs/<variant>/seed<k>/.

    python -m pipeline.train_variant --variant tood --out runs/tood --work-dir runs/.work \
        --curves reports/curves/tood.csv
    torchrun --nproc-per-node 2 -m pipeline.train_variant --variant tood --out runs/tood   # DDP

Re-running resumes each seed from its last.pt; finished seeds are skipped (tood.engine.train.train). With
--work-dir (what dvc.yaml passes) each seed trains in its own folder there, keyed by its settings, and
is then copied into --out, which DVC may delete before a re-run (tood.engine.train.train_published).
--curves writes the seed-mean loss curve (steps every seed logged) for `dvc plots`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

from pipeline.cli import prog, run
from tood.config import load_run_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog(__spec__), description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--variant", required=True, help="variant name in params.yaml (or 'tood')")
    parser.add_argument("--out", type=Path, required=True, help="run folder, e.g. runs/<variant>")
    parser.add_argument("--data-root", type=Path, default=None, help="overrides data.root of params.yaml")
    parser.add_argument("--curves", type=Path, default=None, help="seed-mean losses.csv to write (DVC plot)")
    parser.add_argument(
        "--work-dir", type=Path, default=None,
        help="train each seed in <work-dir>/<variant>-seed<k>-<key> (relative to $DVC_ROOT), then copy "
        "it into --out; default: train in --out itself",
    )  # fmt: skip
    args = parser.parse_args(argv)

    cfg = load_run_config(args.params, args.variant)
    import torch  # after parsing and the config check: --help and a bad params.yaml answer at once
    import torch.distributed as dist

    from tood.engine.train import train, train_published

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if distributed:  # launched by torchrun: NCCL on GPU, gloo on CPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        for seed in cfg.seeds:
            out = args.out / f"seed{seed}"
            if args.work_dir is None:
                summary = train(cfg, seed, out, data_root=args.data_root)
            else:
                summary = train_published(cfg, seed, out, args.work_dir, data_root=args.data_root)
            if not dist.is_initialized() or dist.get_rank() == 0:
                print(json.dumps({"variant": cfg.variant, "seed": seed, **summary}))
        if args.curves is not None and (not dist.is_initialized() or dist.get_rank() == 0):
            write_mean_curve([args.out / f"seed{s}" / "losses.csv" for s in cfg.seeds], args.curves)
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


def write_mean_curve(paths: list[Path], out: Path) -> None:
    """Mean over runs of every loss column of losses.csv, on the steps all runs logged."""
    tables = []
    for path in paths:
        with path.open(newline="") as f:
            tables.append({int(r["step"]): r for r in csv.DictReader(f)})
    steps = sorted(set.intersection(*(set(t) for t in tables)))
    columns = [c for c in next(iter(tables[0].values()), {}) if c != "step"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", *columns])
        for step in steps:
            cells = [[t[step][c] for t in tables] for c in columns]
            writer.writerow([step, *(_mean(values) for values in cells)])


def _mean(values: list[str]) -> float | str:
    numbers = [float(v) for v in values if v != ""]
    return sum(numbers) / len(numbers) if numbers else ""


if __name__ == "__main__":
    run(main)
