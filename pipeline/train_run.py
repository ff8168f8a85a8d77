"""One (variant, seed) run of a train stage: what every executor starts (tood.engine.executor).

    python -m pipeline.train_run --variant tood --seed 0 --out runs/tood/seed0 --work-dir runs/.work --threads 1
    torchrun --standalone --nproc-per-node 8 -m pipeline.train_run ...   # a multi-GPU Slurm task

--threads is the run's torch intra-op thread count, decided by the stage (executor.local_plan, or
executor.slurm.cpus_per_task); it is written into the run's train.num_threads, so config.json and the
MLflow param `train.num_threads` say what the run used (CPU numerics depend on it; it is outside the
run's work-folder key, tood.engine.checkpoint.NON_TRAINING_KEYS). Prints the run's summary as one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from pipeline.cli import prog, run
from tood.config import load_run_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog(__spec__), description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--variant", required=True, help="variant name in params.yaml (or 'tood')")
    parser.add_argument("--seed", type=int, required=True, help="one of the variant's seeds")
    parser.add_argument("--out", type=Path, required=True, help="run folder, e.g. runs/<variant>/seed<k>")
    parser.add_argument("--work-dir", type=Path, default=None, help="as pipeline.train_variant's")
    parser.add_argument("--data-root", type=Path, default=None, help="overrides data.root of params.yaml")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: train.num_threads)"
    )
    args = parser.parse_args(argv)

    cfg = load_run_config(args.params, args.variant)
    if args.seed not in cfg.seeds:
        parser.error(f"--seed {args.seed} is not a seed of {cfg.variant} {list(cfg.seeds)}")
    if args.threads > 0:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_threads=args.threads))
    import torch
    import torch.distributed as dist

    from tood.engine.train import train, train_published

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if distributed:  # under torchrun: NCCL on GPU, gloo on CPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(f"{cfg.variant} seed {args.seed}: train.num_threads {cfg.train.num_threads}", flush=True)
        if args.work_dir is None:
            summary = train(cfg, args.seed, args.out, data_root=args.data_root)
        else:
            summary = train_published(cfg, args.seed, args.out, args.work_dir, data_root=args.data_root)
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(json.dumps({"variant": cfg.variant, "seed": args.seed, **summary}), flush=True)
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    run(main)
