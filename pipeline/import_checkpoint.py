"""Convert a released TOOD / ATSS R-50 FPN checkpoint (mmdetection 2.x/3.x, fcjian/TOOD) into ours.

    python -m pipeline.import_checkpoint SRC DST [--params profiles/coco.yaml] [--anchor free|based]
                                         [--evaluate METRICS_JSON [--data-root DIR]]

DST is a checkpoint for tood.engine.inference.load_detector and `pipeline.predict --checkpoint DST`: the converted
weights, the --params headline config with the source's head and anchor type (and nothing to download),
and COCO's 80 category ids and names. A source tensor without a place in our model, one of ours missing
from the source, a shape mismatch, or a file that is no PyTorch checkpoint ends the command with one line
naming the file and the keys, and exit status 2 (pipeline.cli.run).
`--evaluate` then runs COCO val (data section of --params) and writes COCO AP + the Table 6 metrics.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from pipeline.cli import CliError, prog, run
from tood.config import RunConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog(__spec__), description=__doc__.splitlines()[0])
    parser.add_argument(
        "src", type=Path, help="mmdetection / fcjian checkpoint (.pth), weights under state_dict"
    )
    parser.add_argument("dst", type=Path, help="our checkpoint to write")
    parser.add_argument("--params", default="profiles/coco.yaml", help="params file giving the model config")
    parser.add_argument("--anchor", choices=("free", "based"), help="when the source's meta has no config")
    parser.add_argument("--allow-pickle", action="store_true", help="full torch.load: only for trusted files")
    parser.add_argument("--evaluate", type=Path, metavar="METRICS_JSON", help="evaluate DST on COCO val")
    parser.add_argument("--data-root", type=Path, default=None, help="overrides data.root of --params")
    args = parser.parse_args(argv)
    import torch  # after parsing, so --help is fast

    from tood.engine.inference import config_from_checkpoint, evaluate_checkpoint
    from tood.model.mmdet_import import CheckpointImportError, import_checkpoint, load_source

    try:
        ckpt = import_checkpoint(
            load_source(args.src, args.allow_pickle), args.params, args.anchor, source_name=str(args.src)
        )
    except CheckpointImportError as e:  # pipeline.cli.run: one line, exit 2, as every CLI's user errors
        raise CliError(f"{args.src}: {e}") from None
    args.dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, args.dst)
    s = ckpt["summary"]
    print(f"{s['source_format']} {s['head']} head, anchor-{s['anchor']} ({s['anchor_from']}): {s['tensors']} "
          f"tensors -> {args.dst} (variant {ckpt['config']['variant']})")  # fmt: skip
    if args.evaluate is not None:
        cfg: RunConfig = config_from_checkpoint(ckpt, str(args.dst))
        metrics = evaluate_checkpoint(cfg, args.dst, data_root=args.data_root)
        args.evaluate.parent.mkdir(parents=True, exist_ok=True)
        args.evaluate.write_text(json.dumps(_finite(metrics), indent=2) + "\n")
        print("  ".join(f"{k} {metrics[k]:.3f}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")))
    return 0


def _finite(value):
    """Strict-JSON copy: NaN / inf (undefined alignment metrics) -> null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


if __name__ == "__main__":
    run(main)
