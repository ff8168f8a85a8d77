"""One rank of the DDP equality test (tests/test_distributed.py); not a test module itself.

    python tests/ddp_worker.py CONFIG_JSON DATA_ROOT OUT_DIR LR          # one process
    torchrun --standalone --nproc-per-node 2 tests/ddp_worker.py ...    # two gloo ranks

Trains `epochs` epochs with the real tood.engine.train pieces (build_state, train_loader, set_loader_epoch,
schedule_lr, train_step); LR "schedule" uses the configured schedule, a number fixes the lr (0 keeps
the weights where they are). Saves, per step, the logged (rank-averaged) losses, the gradients every rank holds after
DDP's all-reduce, and the image ids of this rank's slice; plus the final weights. Written to
OUT_DIR/rank<r>.pt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tood.config import RunConfig
from tood.data.dataset import build_dataset
from tood.engine.loop import schedule_lr, set_loader_epoch, train_loader, train_step
from tood.engine.runtime import dist_info, setup_determinism
from tood.engine.train import build_state


def main(config_json: str, data_root: str, out_dir: str, lr: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    rank, world = dist_info()
    cfg = RunConfig.load(config_json)
    seed = cfg.seeds[0]
    setup_determinism(seed, num_threads=1)
    dataset = build_dataset(cfg, Path(data_root), train=True)
    state = build_state(cfg, dataset.num_classes, torch.device("cpu"), world, None)
    loader = train_loader(
        dataset, cfg.train.batch_size // world, seed=seed, rank=rank, world=world, workers=0
    )
    steps = []
    for epoch in range(cfg.train.epochs):
        set_loader_epoch(loader, seed, epoch)
        state.epoch = epoch
        for batch in loader:
            step_lr = (
                schedule_lr(cfg.optim, cfg.train.batch_size, state.iteration, epoch)
                if lr == "schedule"
                else float(lr)
            )
            for group in state.optimizer.param_groups:
                group["lr"] = step_lr
            losses = train_step(state, batch, cfg, torch.device("cpu"), world)
            state.iteration += 1
            grads = {
                name: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                for name, p in state.detector.named_parameters()
            }
            steps.append(
                {
                    "losses": losses,
                    "grads": grads,
                    "images": [(m["image_id"], m["flipped"]) for m in batch.metas],
                }
            )
    weights = {k: v.clone() for k, v in state.detector.state_dict().items()}
    torch.save({"steps": steps, "weights": weights, "world": world}, Path(out_dir) / f"rank{rank}.pt")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
