"""One side of bench/ab.py: trains on one fixed batch with whichever `tood` is first on sys.path.

bench/ab.py starts this file twice, with PYTHONPATH set to two source trees (today's and an older git
rev checked out by `git worktree`), so it imports nothing from bench/ and only the tood API that every
compared rev has: config.load_params / resolve_run_config, build_state, train_step, seed_everything and Batch
(`tood_api`: in tood/engine/ and tood/data/ since the move into subpackages, in tood/train.py and
tood/data.py before it).

Protocol (stdout lines starting with "@@" are JSON; anything else the code prints is passed through):
    start   -> @@{"ready": true, "tood": <path of the tood package>, "amp": ..., "losses": {...}}
    stdin "run K"  -> K timed training steps on the batch -> @@{"ms": [wall ms], "cpu_ms": [...], "losses": {...}}
    stdin "quit"   -> exit
The side's config is its tree's params.yaml (the headline `tood` variant) with --set overrides. A config
with pretrained weights (`model.pretrained` true, imagenet or a path) is built from scratch (no ImageNet
weights offline; the weights' values do not change the work) and then frozen as the recipe does:
requires_grad off for the stem and the first `model.frozen_stages` stages, so backward stops there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml


def emit(payload: dict) -> None:
    print("@@" + json.dumps(payload), flush=True)


def load_config(params_path: Path, sets: list[str]):
    """The headline RunConfig of `params_path` with KEY=VALUE overrides (YAML values), and whether the config
    asked for pretrained weights (model.pretrained is a bool in older revs, none | imagenet | a path now)."""
    from tood.config import HEADLINE, ModelConfig, load_params, resolve_run_config

    params = load_params(params_path)
    for item in sets:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = params
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = yaml.safe_load(value)
    no_weights = ModelConfig.__dataclass_fields__["pretrained"].default  # False, or "none"
    pretrained = (params.get("model") or {}).get("pretrained", no_weights) not in (False, None, "none")
    params.setdefault("model", {})["pretrained"] = no_weights
    return resolve_run_config(params, HEADLINE, where=str(params_path)), pretrained


def freeze_like_recipe(detector, frozen_stages: int) -> None:
    """No gradients for the stem + first `frozen_stages` stages, as tood.model.backbone does when pretrained."""
    body = detector.backbone.body
    for module in [body.stem, *body.stages[: max(frozen_stages, 0)]] if frozen_stages >= 0 else []:
        module.requires_grad_(False)


def tood_api():
    """(build_state, train_step, seed_everything, Batch) from whichever layout the rev on sys.path has."""
    try:
        from tood.data.dataset import Batch
        from tood.engine.loop import train_step
        from tood.engine.runtime import seed_everything
        from tood.engine.train import build_state
    except ModuleNotFoundError:  # a rev before tood/ became subpackages: one flat package
        from tood.train import build_state, seed_everything, train_step

        from tood.data import Batch
    return build_state, train_step, seed_everything, Batch


def load_batch(path: Path):
    Batch = tood_api()[3]
    saved = torch.load(path, weights_only=True)
    batch = Batch(saved["images"], saved["gt_boxes"], saved["gt_labels"], saved["gt_mask"])
    return batch, int(saved["num_classes"])


def timed_steps(state, batch, cfg, device, steps: int) -> tuple[list[float], list[float], dict]:
    """(wall ms per step, process CPU ms per step (all threads), last losses). On a shared machine the CPU
    time is the steadier figure: waiting for a core does not count, only the work (and OpenMP spinning)."""
    train_step = tood_api()[1]
    wall, cpu, losses = [], [], {}
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        losses = train_step(state, batch, cfg, device, 1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall.append(1000 * (time.perf_counter() - start))
        cpu.append(1000 * (time.process_time() - start_cpu))
    return wall, cpu, losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--batch", type=Path, required=True, help="the fixed batch, saved by bench/ab.py")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE config override")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--phase", choices=["tal", "atss"], default="tal")
    parser.add_argument("--lr", type=float, default=1e-3, help="fixed lr: many steps on one batch")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    import tood

    build_state, _, seed_everything, _ = tood_api()

    cfg, pretrained = load_config(args.params, args.set)
    batch, num_classes = load_batch(args.batch)
    device = torch.device(args.device)
    seed_everything(0)
    state = build_state(cfg, num_classes, device, 1, None)
    if pretrained:
        freeze_like_recipe(state.detector, cfg.model.frozen_stages)
    state.epoch = cfg.assign.warmup_epochs if args.phase == "tal" else 0
    for group in state.optimizer.param_groups:
        group["lr"] = args.lr
    _, _, losses = timed_steps(state, batch, cfg, device, 1)  # the first step's losses: same batch, same init
    amp = getattr(state, "amp", cfg.train.amp)  # the resolved precision where the rev has `auto`
    trainable = sum(p.numel() for p in state.detector.parameters() if p.requires_grad)
    emit({"ready": True, "tood": str(Path(tood.__file__).parent), "amp": amp, "losses": losses,
          "trainable_params": trainable, "config": cfg.to_dict(), "pretrained_recipe": pretrained})  # fmt: skip
    for line in sys.stdin:
        command = line.split()
        if command[:1] == ["run"]:
            ms, cpu_ms, losses = timed_steps(state, batch, cfg, device, int(command[1]))
            emit({"ms": ms, "cpu_ms": cpu_ms, "losses": losses})
        elif command[:1] == ["quit"]:
            break


if __name__ == "__main__":
    main()
