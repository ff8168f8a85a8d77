"""Step-time ratio of two source trees on the same batch, measured side by side in one run.

The base side is a git rev (default HEAD~1) checked out with `git worktree add` into a temp dir, the new side
the working tree (or another rev). Each side is one long-lived bench/ab_worker.py process that imports its
own tree's `tood` (PYTHONPATH) with this .venv, builds its model once and then trains on one fixed batch
(the first batch of the shapes train split in the TAL phase, saved once and loaded by both) when told to.
Only one side computes at a time, and the rounds alternate ABBA (A B, B A, A B, ...), so drift in the
background load of a shared machine hits both sides alike; the ratio is taken per round (base mean / new
mean) and summarised by its median and quartiles.

Each side's config is its own tree's params.yaml (headline `tood` variant); --set overrides both, --base-set
and --new-set one side. A `model.pretrained` other than none/false (e.g. =true, =imagenet) means the recipe's
compute: built from scratch (no weights offline), then stem + `frozen_stages` stages frozen (ab_worker.py).
The first-step losses of both sides are printed: with the same config they must agree to fp32 rounding.

    # new code + new default (frozen recipe, amp auto) vs the previous commit's default
    .venv/bin/python -m bench.ab --base HEAD~1 --new-set model.pretrained=true --new-set model.norm=frozen_bn
    # same config on both sides (code change only)
    .venv/bin/python -m bench.ab --base main --set train.amp=fp32
    # amp check: fp32 vs bf16 in today's code, and what `auto` picks here
    .venv/bin/python -m bench.ab --amp-check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from bench.common import cpu_summary, write_json

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "ab_worker.py"


@contextmanager
def source_tree(rev: str):
    """The working tree for ".", else a detached `git worktree` of `rev` in a temp dir (removed after)."""
    if rev == ".":
        yield REPO, "working tree"
        return
    commit = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="ab-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(path), rev], cwd=REPO, check=True)
        try:
            yield path, f"{rev} ({commit})"
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, check=False)


def save_fixed_batch(path: Path, params: Path, epoch_phase: str) -> None:
    """The first batch of the train split (this tree's loader, seed 0) at the phase's epoch, to `path`."""
    from tood.config import HEADLINE, load_run_config
    from tood.data.dataset import build_dataset
    from tood.engine.loop import set_loader_epoch, train_loader

    cfg = load_run_config(params, HEADLINE)
    dataset = build_dataset(cfg, None, train=True)
    loader = train_loader(dataset, cfg.train.batch_size, seed=0, rank=0, world=1, workers=0)
    set_loader_epoch(loader, 0, cfg.assign.warmup_epochs if epoch_phase == "tal" else 0)
    batch = next(iter(loader))
    tensors = {k: getattr(batch, k) for k in ("images", "gt_boxes", "gt_labels", "gt_mask")}
    torch.save({**tensors, "num_classes": dataset.num_classes}, path)


class Side:
    """A running ab_worker.py on one source tree."""

    def __init__(self, name: str, tree: Path, label: str, sets: list[str], args, batch: Path):
        self.name, self.label = name, label
        self.threads = getattr(args, f"{name}_threads") or args.threads
        cmd = [sys.executable, str(WORKER), "--params", str(tree / "params.yaml"), "--batch", str(batch)]
        cmd += ["--threads", str(self.threads), "--phase", args.phase, "--device", args.device]
        cmd += [a for s in sets for a in ("--set", s)]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen(
            cmd, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.info = self.read()
        self.ms: list[float] = []  # wall ms of every timed step
        self.cpu_ms: list[float] = []  # process CPU ms (all threads) of every timed step

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
            print(f"[{self.name}] {line}", end="", file=sys.stderr)
        raise SystemExit(f"{self.name} worker exited (code {self.proc.wait()}) before answering")

    def run(self, steps: int) -> dict:
        self.proc.stdin.write(f"run {steps}\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def interleave(base: Side, new: Side, rounds: int, steps: int, warmup: int) -> dict[str, list[float]]:
    """ABBA rounds of `steps` steps per side; the per-round ratios base/new of wall and of CPU time."""
    ratios = {"wall": [], "cpu": []}
    for r in range(warmup + rounds):
        order = (base, new) if r % 2 == 0 else (new, base)
        mean = {}
        for side in order:
            out = side.run(steps)
            mean[side.name] = statistics.fmean(out["ms"]), statistics.fmean(out["cpu_ms"])
            if r >= warmup:
                side.ms += out["ms"]
                side.cpu_ms += out["cpu_ms"]
        if r < warmup:
            continue
        (bw, bc), (nw, nc) = mean["base"], mean["new"]
        ratios["wall"].append(bw / nw)
        ratios["cpu"].append(bc / nc)
        print(f"round {r - warmup + 1:2d}: wall base {bw:7.1f} ms new {nw:7.1f} ms ratio {bw / nw:.3f} | "
              f"cpu base {bc:7.1f} ms new {nc:7.1f} ms ratio {bc / nc:.3f}", flush=True)  # fmt: skip
    return ratios


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """'key: a -> b' for every leaf that differs (variant/seeds ignored)."""
    out = []
    for key in sorted(a.keys() | b.keys()):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va} -> {vb}")
    return out


def loss_agreement(a: dict, b: dict) -> str:
    keys = sorted(a.keys() & b.keys())
    rel = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in keys) if keys else float("nan")
    return (
        "first-step losses "
        + ", ".join(f"{k} {a[k]:.6f} / {b[k]:.6f}" for k in keys)
        + f" (max rel {rel:.1e})"
    )


def quartiles(values: list[float]) -> list[float]:
    return statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3


def report(args, base: Side, new: Side, ratios: dict[str, list[float]]) -> dict:
    """Print and return medians per side and the speed-up's median and quartiles, wall and CPU time."""
    for side in (base, new):
        print(f"{side.name:4s} {side.label}: median {statistics.median(side.ms):.1f} ms/step wall, "
              f"{statistics.median(side.cpu_ms):.1f} ms CPU; amp={side.info['amp']}, threads={side.threads}, "
              f"trainable={side.info['trainable_params'] / 1e6:.2f} M")  # fmt: skip
    print(loss_agreement(base.info["losses"], new.info["losses"]))
    q = {kind: quartiles(values) for kind, values in ratios.items()}
    for kind in ("wall", "cpu"):
        print(f"speed-up base/new ({kind} time): median {q[kind][1]:.3f}x  (quartiles {q[kind][0]:.3f}-"
              f"{q[kind][2]:.3f}, {len(ratios[kind])} ABBA rounds of {args.steps} steps)")  # fmt: skip
    return {
        "cpu": cpu_summary(), "threads": [base.threads, new.threads], "base": base.label, "new": new.label,
        "base_ms_median": statistics.median(base.ms), "new_ms_median": statistics.median(new.ms),
        "base_cpu_ms_median": statistics.median(base.cpu_ms), "new_cpu_ms_median": statistics.median(new.cpu_ms),
        "ratio_median": q["wall"][1], "ratio_quartiles": [q["wall"][0], q["wall"][2]],
        "cpu_ratio_median": q["cpu"][1], "cpu_ratio_quartiles": [q["cpu"][0], q["cpu"][2]],
        "ratios": ratios, "base_amp": base.info["amp"], "new_amp": new.info["amp"],
        "config_diff": config_diff(base.info["config"], new.info["config"]),
        "losses": {"base": base.info["losses"], "new": new.info["losses"]},
    }  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD~1", help="git rev of the base side, or . (working tree)")
    parser.add_argument("--new", default=".", help="git rev of the new side (default: the working tree)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for both sides")
    parser.add_argument("--base-set", action="append", default=[], help="KEY=VALUE for the base side")
    parser.add_argument("--new-set", action="append", default=[], help="KEY=VALUE for the new side")
    parser.add_argument("--amp-check", action="store_true", help="working tree fp32 (base) vs bf16 (new)")
    parser.add_argument("--rounds", type=int, default=8, help="timed ABBA rounds")
    parser.add_argument("--steps", type=int, default=3, help="steps per side per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads per side")
    parser.add_argument("--base-threads", type=int, default=0, help="base side's threads (default --threads)")
    parser.add_argument("--new-threads", type=int, default=0, help="new side's threads (default --threads)")
    parser.add_argument("--phase", choices=["tal", "atss"], default="tal")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml", help="for the fixed batch")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.amp_check:
        args.base, args.new = ".", "."
        args.base_set, args.new_set = [*args.base_set, "train.amp=fp32"], [*args.new_set, "train.amp=bf16"]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cpu = cpu_summary()
    print(f"cpu: {cpu['model']}; flags: {' '.join(cpu['flags']) or '-'}; torch capability: {cpu['capability']}; "
          f"torch {torch.__version__}; threads per side: base {args.base_threads or args.threads}, "
          f"new {args.new_threads or args.threads}")  # fmt: skip
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ab-batch-")))
        save_fixed_batch(tmp / "batch.pt", args.params, args.phase)
        base_tree, base_label = stack.enter_context(source_tree(args.base))
        new_tree, new_label = stack.enter_context(source_tree(args.new))
        base = Side("base", base_tree, base_label, [*args.set, *args.base_set], args, tmp / "batch.pt")
        stack.callback(base.close)
        new = Side("new", new_tree, new_label, [*args.set, *args.new_set], args, tmp / "batch.pt")
        stack.callback(new.close)
        print(
            "config base -> new: "
            + ("; ".join(config_diff(base.info["config"], new.info["config"])) or "same")
        )
        ratios = interleave(base, new, args.rounds, args.steps, args.warmup)
        figures = report(args, base, new, ratios)
    if args.amp_check:
        print_amp_verdict(figures)
    write_json(args.json, figures)


def print_amp_verdict(figures: dict) -> None:
    from tood.engine.runtime import resolve_amp

    auto = resolve_amp("auto", torch.device("cpu"))
    ratio = figures["ratio_median"]
    verdict = (
        "consistent" if auto == ("bf16" if ratio > 1.0 else "fp32") else "INCONSISTENT: auto is the slower"
    )
    print(
        f"amp auto -> {auto} on this CPU; bf16 measured {ratio:.2f}x as fast as fp32 (wall, "
        f"{figures['cpu_ratio_median']:.2f}x in CPU time): {verdict}"
    )


if __name__ == "__main__":
    main()
