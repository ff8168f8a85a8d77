"""bench.gpu_check's report: every figure as JSON, and a Markdown summary (environment, one row per section,
then each section's checks and figures)."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(report: dict, out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    paths[0].write_text(json.dumps(report, indent=2, default=str) + "\n")
    paths[1].write_text(markdown(report))
    return paths


def markdown(report: dict) -> str:
    sections = report["sections"]
    env = sections.get("environment", {})
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']:.0f} GiB)" for g in env.get("gpus", [])) or "none"
    git = env.get("git", {})
    dirty = " (with uncommitted changes)" if git.get("dirty") else ""
    tiny = " (--tiny: figures show only that the code runs)" if report["tiny"] else ""
    versions = [env.get(k) for k in ("torch", "torchvision", "cuda", "cudnn", "nccl")]
    versions += [gpus, env.get("cpu", {}).get("model")]
    lines = [
        f"# GPU check {report['started']}{tiny}",
        "",
        f"`{report['command']}` on `{report['device']}`, commit `{git.get('commit', '?')[:12]}`{dirty}",
        "",
        *table(["torch", "torchvision", "CUDA (torch's build)", "cuDNN", "NCCL", "GPUs", "CPU"], [versions]),
        "",
        *table(
            ["section", "result", "seconds", "headline"],
            [
                [n, "pass" if s["ok"] else "**FAIL**", f"{s['seconds']:.1f}", headline(n, s)]
                for n, s in sections.items()
            ],
        ),
    ]
    for name, s in sections.items():
        lines += ["", f"## {name}", ""]
        lines += [f"- [{'x' if c['ok'] else ' '}] {c['what']}" for c in s.get("checks", [])]
        if "error" in s:
            lines += [f"- error: `{s['error'].splitlines()[0]}`", "", "```", s["traceback"].rstrip(), "```"]
        else:
            lines += details(name, s)
    return "\n".join(lines) + "\n"


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows
    ]


def headline(name: str, s: dict) -> str:
    """The section's key figure for the summary table."""
    if "error" in s:
        return s["error"].splitlines()[0][:120]
    if name == "train_throughput":
        return "; ".join(
            f"{amp}: {f['images_per_s']:.2f} img/s, peak {peak_mib(f):.0f} MiB"
            for amp, f in s["by_amp"].items()
        )
    if name == "eval_throughput":
        minutes = s["coco_val_extrapolated_s"] / 60
        return f"{s['images_per_s']:.2f} img/s inference; 5,000 val images ~ {minutes:.1f} min with COCOeval"
    if name == "amp":
        return ", ".join(f"{p}: rel. diff {v['rel_diff']['loss']:.1e}" for p, v in s["phases"].items())
    if name == "quick_profile":
        return f"{s['total_s']:.0f} s, tables: `{Path(s['tables']['path']).name}`"
    if name == "distributed":
        return (
            f"world {s['world_size']} ({s['reduce']['backend']}), resumed after epoch {s['killed']['epoch']}"
        )
    return "; ".join(c["what"] for c in s.get("checks", []))


def details(name: str, s: dict) -> list[str]:
    """A passed section's figures under its checks."""
    if name == "environment":
        flags = {k: s[k] for k in ("bf16_supported", "tf32", "cudnn_benchmark") if k in s}
        gpus = [
            f"- {g['name']}: {g['memory_gib']:.1f} GiB, sm_{g['capability']}, {g['multiprocessors']} SMs"
            for g in s["gpus"]
        ]
        return [
            *gpus,
            f"- python {s['python']}, torch threads {s['torch_threads']}" + (f", {flags}" if flags else ""),
        ]
    if name == "amp":
        rows = [
            [p, f"{v['fp32']['loss']:.5f}", f"{v['bf16']['loss']:.5f}", f"{v['rel_diff']['loss']:.2e}",
             s["tolerance"][p]]
            for p, v in s["phases"].items()
        ]  # fmt: skip
        return ["", *table(["phase", "fp32 loss", "bf16 loss", "rel. diff", "tolerance"], rows)]
    if name == "train_throughput":
        gpu = "peak_allocated_mib" in next(iter(s["by_amp"].values()))
        memory = "peak MiB (GPU, allocated)" if gpu else "peak MiB (process RSS)"
        rows = [
            [amp, f"{f['images_per_s']:.2f}", f"{f['s_per_step']:.3f}", f"{peak_mib(f):.0f}"]
            for amp, f in s["by_amp"].items()
        ]
        return ["", f"Setting: {s['setting']}", "", *table(["amp", "images/s", "s/step", memory], rows)]
    if name == "eval_throughput":
        seconds = s["phase_s"]
        timed = (
            f"- {s['images']} images in batches of {s['batch_size']}: run_inference "
            f"{seconds['run_inference']:.2f} s, COCOeval {seconds['cocoeval']:.2f} s, "
            f"{s['detections_per_image']:.0f} detections/image, peak {peak_mib(s):.0f} MiB"
        )
        return [timed, f"- COCO val2017 (5,000 images), extrapolated: {s['coco_val_extrapolated_s']:.0f} s"]
    if name == "distributed":
        return [
            f"- launch: `python {s['launch']}` ({s['gpus']} GPUs); the resumed run took {s['resume_s']:.1f} s"
        ]
    if name == "quick_profile":
        rows = [
            [
                st["stage"],
                f"{st['seconds']:.1f}",
                st.get("startup_s"),
                st.get("train_steps_s", st.get("inference_s")),
            ]
            for st in s["stages"]
        ]
        return [f"- source: {s['source']}", "", *table(["stage", "s", "start-up s", "compute s"], rows)]
    return []


def peak_mib(figures: dict) -> float:
    """The GPU's peak allocated memory, or on a CPU the process's peak RSS."""
    return figures.get("peak_allocated_mib", figures.get("process_peak_rss_mib"))
