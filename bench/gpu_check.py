"""One prepared check of the whole project on a GPU machine (issue 29): a few minutes, one report.

    python -m bench.gpu_check                      # CUDA, <= 8 min on one H100/H200: bench/gpu/<date>.{json,md}
    python -m bench.gpu_check --device cpu --tiny  # the same code on a CPU in ~1.5 min (tests/test_gpu_check.py)

Sections, in this order; each records pass/fail with its figures, and one failing does not stop the others
(the report is rewritten after every section, so even a killed check leaves what it measured):
  environment       torch, torchvision, CUDA, cuDNN, NCCL, the GPUs (name, memory, capability), TF32
                    switches, the CPU, the git commit
  amp               bf16 autocast + channels_last on the recipe's model: the loss of one batch within a stated
                    tolerance of fp32's (bench.gpu_speed.TOLERANCE, justified there), then a few finite steps
  train_throughput  the paper's recipe (ResNet-50, FPN 256, 1333x800, batch 2 per GPU, T-Head + TAL, random
                    weights, synthetic data): images/s and peak memory, in the precision `train.amp: auto`
                    resolves to and in fp32
  eval_throughput   the evaluate stage's work on synthetic 1333x800 images (inference, post-processing,
                    alignment stats, COCOeval), extrapolated to COCO val2017's 5,000 images
  distributed       reduce_mean under torchrun (NCCL, one process per visible GPU) and a training run started as
                    a Slurm task starts it, killed after epoch 1 and resumed from last.pt (bench.gpu_runs)
  quick_profile     `pipeline.profile quick` + `dvc repro` end to end in a temporary copy of the working tree
                    (--rev REV: of that commit); its tables.md is copied beside the report
The report: <out-dir>/<stem>.json (every figure) and <stem>.md (the summary); the stem is the UTC date for
the default CUDA run, <date>-<device>[-tiny] otherwise. Exit code 0 when every section passed, 1 when one
failed; asked for CUDA where torch sees none, it stops at once with one line on stderr (exit 2).
`--tiny` shrinks every section (ResNet-18 at 64x64, a few steps, one thread, the quick profile cut to the
headline run on 8 images): its figures only show that the code runs. `--budget-s` bounds the whole check: the quick profile,
last and longest, is stopped when the budget runs out.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.gpu_report import write_report

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("environment", "amp", "train_throughput", "eval_throughput", "distributed", "quick_profile")
# steps and batches per section: (full, tiny)
AMP_STEPS = (5, 3)
TRAIN_STEPS = ((3, 15), (1, 2))  # (untimed warm-up, timed)
EVAL_BATCHES = ((2, 25), (1, 2))  # (untimed warm-up, timed) batches of 2 images


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_check", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:]),
    )  # fmt: skip
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny model, images and profile: a CPU smoke run")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "gpu", help="default: bench/gpu")
    parser.add_argument("--budget-s", type=float, default=480.0, help="the whole check's time (default 480)")
    parser.add_argument(
        "--rev", default=None, help="quick profile: run this commit (default: the working tree)"
    )
    parser.add_argument("--sections", nargs="+", choices=SECTIONS[1:], default=list(SECTIONS[1:]),
                        help="run only these (environment always runs)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"bench.gpu_check: error: --device cuda, but torch {torch.__version__} sees no CUDA device "
            f"(built for CUDA {torch.version.cuda}); `--device cpu --tiny` runs the CPU check",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.tiny:  # as the tests: on a small shared CPU, spinning OpenMP threads made steps 10x slower
        torch.set_num_threads(1)
    now = datetime.now(UTC)
    stem = now.strftime("%Y-%m-%d") + ("" if args.device == "cuda" and not args.tiny else f"-{args.device}")
    stem += "-tiny" if args.tiny else ""
    command = " ".join(["python -m bench.gpu_check", *(sys.argv[1:] if argv is None else argv)])
    report = {"started": now.isoformat(timespec="seconds"), "command": command, "device": args.device,
              "tiny": args.tiny, "sections": {}}  # fmt: skip
    start = time.monotonic()
    for name, section in plan(args, device, stem, start):
        if name != "environment" and name not in args.sections:
            continue
        report["sections"][name] = run_section(name, section, start)
        write_report(report, args.out_dir, stem)
    report["total_s"] = time.monotonic() - start
    paths = write_report(report, args.out_dir, stem)
    failed = [n for n, s in report["sections"].items() if not s["ok"]]
    print(f"{'FAILED: ' + ', '.join(failed) if failed else 'all sections passed'}; "
          f"{report['total_s']:.0f} s; wrote {paths[0]} and {paths[1]}")  # fmt: skip
    return 1 if failed else 0


def plan(args: argparse.Namespace, device, stem: str, start: float) -> list[tuple[str, Callable[[], dict]]]:
    """(name, zero-argument function) per section, in SECTIONS order."""
    from bench import gpu_runs, gpu_speed  # tood and MLflow: after the arguments and the device check

    t, tiny = int(args.tiny), args.tiny

    def remaining() -> float:  # what the subprocess sections may take
        return max(60.0, args.budget_s - (time.monotonic() - start))

    return [
        ("environment", lambda: environment(device)),
        ("amp", lambda: gpu_speed.amp_section(device, tiny, AMP_STEPS[t])),
        ("train_throughput", lambda: gpu_speed.train_throughput_section(device, tiny, *TRAIN_STEPS[t])),
        ("eval_throughput", lambda: gpu_speed.eval_throughput_section(device, tiny, *EVAL_BATCHES[t])),
        ("distributed", lambda: gpu_runs.distributed_section(args.device, tiny, remaining())),
        ("quick_profile", lambda: gpu_runs.quick_profile_section(
            args.device, tiny, args.out_dir, stem, remaining(), args.rev)),
    ]  # fmt: skip


def run_section(name: str, section, start: float) -> dict:
    """The section's result with its seconds; an exception becomes a failed section with its message."""
    t0 = time.monotonic()
    try:
        result = section()
    except Exception as e:  # noqa: BLE001 -- a failed section is a result; the others still run
        lines = traceback.format_exception(e)
        result = {"ok": False, "error": f"{type(e).__name__}: {e}".strip(), "traceback": "".join(lines[-6:])}
    result["seconds"] = time.monotonic() - t0
    status = "PASS" if result["ok"] else "FAIL"
    detail = result.get("error", "").splitlines()[:1] or [c["what"] for c in result.get("checks", [])][:1]
    print(f"[{time.monotonic() - start:6.0f} s] {name}: {status} ({result['seconds']:.1f} s) {''.join(detail)}",
          flush=True)  # fmt: skip
    return result


def environment(device) -> dict:
    import torch
    import torchvision

    from bench.common import cpu_summary

    cuda = device.type == "cuda"
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nccl": nccl_version() if cuda else None,
        "gpus": [gpu_record(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cpu": cpu_summary(),
        "torch_threads": torch.get_num_threads(),
        "git": git_state(),
    }
    if cuda:
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
        env["tf32"] = {
            "cudnn": torch.backends.cudnn.allow_tf32,
            "matmul": torch.backends.cuda.matmul.allow_tf32,
        }
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
        checks = [(f"{len(env['gpus'])} GPU(s): {env['gpus'][0]['name']}", bool(env["gpus"])),
                  (f"NCCL {env['nccl']}", env["nccl"] is not None)]  # fmt: skip
    else:
        checks = [(f"CPU: {env['cpu']['model']}", True)]
    return {**env, "ok": all(ok for _, ok in checks), "checks": [{"what": w, "ok": ok} for w, ok in checks]}


def nccl_version() -> str | None:
    import torch
    import torch.distributed as dist

    if not dist.is_nccl_available():
        return None
    version = torch.cuda.nccl.version()  # (major, minor, patch) in torch >= 1.13
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def gpu_record(index: int) -> dict:
    import torch

    props = torch.cuda.get_device_properties(index)
    return {"name": props.name, "memory_gib": props.total_memory / 2**30,
            "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count}  # fmt: skip


def git_state() -> dict:
    def git(*cmd: str) -> str:
        proc = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=False)
        return proc.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


if __name__ == "__main__":
    sys.exit(main())
