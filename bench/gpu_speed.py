"""The in-process sections of bench/gpu_check.py: bf16 + channels_last against fp32, and the paper recipe's
training and evaluation throughput. Each returns a section dict {"ok": bool, "checks": [...], figures...}.

The model is the COCO recipe of profiles/coco.yaml (ResNet-50, FPN 256, T-Head + TAL, 80 classes,
1333x800, batch 2 per GPU) built from scratch: no ImageNet weights offline, and the weights' values do
not change the work done; the stem + first stage are frozen as the recipe's pretrained backbone is
(bench.step_breakdown.freeze_like_recipe). Data are synthetic (bench.step_breakdown.synthetic_batches:
N(0,1) pixels at a landscape image's 1333x800 resize, padded to 800x1344, 7 GTs per image). `tiny`
shrinks the model (ResNet-18, FPN 16, 2 head convs) and the images (64x64) so the check runs on a CPU in
seconds; its figures only show that the code runs.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
from pathlib import Path

import torch

from bench.common import PhaseClock, sync, verdict
from bench.step_breakdown import COCO_CLASSES, freeze_like_recipe, synthetic_batches
from tood.config import HEADLINE, RunConfig, load_params, resolve_run_config
from tood.data.dataset import Batch
from tood.engine.evaluate import coco_eval
from tood.engine.inference import run_inference, uses_centerness
from tood.engine.loop import schedule_lr, train_step
from tood.engine.runtime import resolve_amp, seed_everything
from tood.engine.train import build_state
from tood.model.backbone import NO_WEIGHTS

PROFILES = Path(__file__).resolve().parents[1] / "profiles"
COCO_VAL_IMAGES = 5000
TINY_MODEL = {"depth": 18, "fpn_channels": 16, "stacked_convs": 2, "gn_groups": 4}

# bf16 vs fp32 loss on the same batch and weights, relative: |bf16 - fp32| / fp32. bf16 keeps 8 significant
# bits (unit roundoff 2^-8 = 0.39%), but convolutions accumulate in fp32 and the loss is a normalised sum over
# thousands of priors computed in fp32 (tood.engine.loop.compute_loss), so independent roundings mostly
# cancel. In the ATSS warm-up the assignment depends on the priors alone and the difference is the forward's
# rounding: measured 5.2e-5 on the recipe (R-50, 1333x800, random weights; AMD EPYC with native bf16) and
# 1.5e-5 on --tiny. 1% (2.5 roundoffs, ~200x that) leaves room for other kernels and accumulation orders on
# a GPU, while a real fault (a cast in the wrong place, a channels_last layout mix-up, a wrong kernel) moves
# the loss by far more. Under TAL the assignment ranks the predicted scores and IoUs, so bf16 can swap
# near-tied candidates of a GT's top 13: measured 2.9e-3 on the recipe (its cls term 1.3e-2), 3.8e-4 on
# --tiny; 5%.
TOLERANCE = {"atss": 0.01, "tal": 0.05}


def recipe_config(tiny: bool, batch_size: int = 2) -> RunConfig:
    """profiles/coco.yaml's headline run, from scratch, batch `batch_size`; `tiny`: a CPU-sized stand-in."""
    params = load_params(PROFILES / "coco.yaml")
    params["model"] = {**params["model"], "pretrained": NO_WEIGHTS}
    if tiny:
        params["model"].update(TINY_MODEL)
        params["data"] = {**params["data"], "img_scale": [64, 64]}
    cfg = resolve_run_config(params, HEADLINE, where="profiles/coco.yaml")
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch_size))


def with_train(cfg: RunConfig, **train) -> RunConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))


def recipe_state(cfg: RunConfig, device: torch.device):
    """build_state (the trainer's own) for one process, frozen like the recipe, in train mode."""
    seed_everything(0)
    state = build_state(cfg, COCO_CLASSES, device, 1, None)
    freeze_like_recipe(state.detector, cfg.model.frozen_stages)
    state.model.train()
    return state


def set_lr(state, lr: float) -> None:
    for group in state.optimizer.param_groups:
        group["lr"] = lr


def amp_section(device: torch.device, tiny: bool, steps: int) -> dict:
    """bf16 autocast + channels_last: the loss on one batch against fp32's (same weights: lr 0, so train_step
    changes nothing), in the ATSS warm-up and under TAL; then `steps` bf16 steps at the full lr, all finite.
    fp32 is what `train.amp: fp32` runs on the device: on a GPU, TF32 convolutions where torch allows them
    (torch.backends.cudnn.allow_tf32, True by default; recorded in the environment section)."""
    cfg = with_train(recipe_config(tiny), amp="bf16", channels_last=True)
    state = recipe_state(cfg, device)
    batch = next(synthetic_batches(cfg, seed=1))
    checks, phases = [], {}
    for phase, epoch in (("atss", 0), ("tal", cfg.assign.warmup_epochs)):
        state.epoch = epoch
        set_lr(state, 0.0)  # SGD at lr 0 (weight decay included) leaves every weight as it is
        losses = {}
        for amp in ("fp32", "bf16"):
            state.amp = amp
            losses[amp] = train_step(state, batch, cfg, device, world=1)
        rel = {k: abs(losses["bf16"][k] - v) / max(abs(v), 1e-12) for k, v in losses["fp32"].items()}
        phases[phase] = {"epoch": epoch, "fp32": losses["fp32"], "bf16": losses["bf16"], "rel_diff": rel}
        checks.append(
            (f"{phase}: |bf16 - fp32| / fp32 of the loss {rel['loss']:.2e} <= {TOLERANCE[phase]}",
             rel["loss"] <= TOLERANCE[phase])
        )  # fmt: skip
    state.amp, losses = "bf16", []
    state.iteration = cfg.optim.warmup_iters  # past the warm-up: the full lr
    for _ in range(steps):  # raises TrainingDiverged on a non-finite term
        set_lr(state, schedule_lr(cfg.optim, cfg.train.batch_size, state.iteration, state.epoch))
        losses.append(train_step(state, batch, cfg, device, world=1)["loss"])
        state.iteration += 1
    checks.append((f"{steps} bf16 + channels_last steps finite", all(math.isfinite(v) for v in losses)))
    del state
    free(device)
    return {"phases": phases, "tolerance": TOLERANCE, "bf16_step_losses": losses, **verdict(checks)}


def train_throughput_section(device: torch.device, tiny: bool, warmup: int, steps: int) -> dict:
    """images/s and peak memory of the recipe's training step (TAL phase, batch 2), in the precision
    `train.amp: auto` resolves to here and, where that is not fp32, in fp32 too."""
    settings, checks = {}, []
    auto = resolve_amp("auto", device)
    for amp in dict.fromkeys((auto, "fp32")):
        cfg = with_train(recipe_config(tiny), amp=amp)
        reset_peak_memory(device)
        state = recipe_state(cfg, device)
        state.epoch = cfg.assign.warmup_epochs
        batches = synthetic_batches(cfg, seed=2)
        pool = [next(batches) for _ in range(2)]  # built before timing: the loader's work is not measured
        for i in range(warmup + steps):
            if i == warmup:
                sync(device)
                start = time.perf_counter()
            set_lr(state, schedule_lr(cfg.optim, cfg.train.batch_size, state.iteration, state.epoch))
            train_step(state, pool[i % len(pool)], cfg, device, world=1)
            state.iteration += 1
        sync(device)
        seconds = time.perf_counter() - start
        ips = steps * cfg.train.batch_size / seconds
        settings[amp] = {
            "images_per_s": ips,
            "s_per_step": seconds / steps,
            **peak_memory(device),
            "channels_last": cfg.train.channels_last,
        }
        checks.append((f"{amp}: {ips:.2f} images/s over {steps} steps", ips > 0 and math.isfinite(ips)))
        del state
        free(device)
    setting = recipe_summary(recipe_config(tiny))
    return {"setting": setting, "warmup_steps": warmup, "timed_steps": steps, "by_amp": settings,
            **verdict(checks)}  # fmt: skip


def eval_throughput_section(device: torch.device, tiny: bool, warmup: int, batches: int) -> dict:
    """The evaluate stage's work per image on synthetic 1333x800 images: tood.engine.inference.run_inference
    (forward in fp32, as evaluation runs, post-processing, Table 6 alignment stats) and COCOeval, timed
    apart; extrapolated to COCO val2017's 5,000 images. score_thr 0 lets every level's top nms_pre
    candidates through to NMS: random weights would otherwise leave a threshold-dependent, arbitrary
    number, and this is the most post-processing a trained model can cost. Not included: the loader's JPEG
    decoding and resizing (DataLoader workers, in parallel with the GPU) and the process start-up."""
    cfg = recipe_config(tiny)
    cfg = with_train(cfg, batch_size=cfg.eval.batch_size)  # synthetic_batches' batch: the eval batch (2)
    eval_cfg = dataclasses.replace(cfg.eval, score_thr=0.0)
    reset_peak_memory(device)
    state = recipe_state(cfg, device)
    detector = state.detector.eval()
    pool = eval_batches(cfg, warmup + batches)
    use_ctr = uses_centerness(cfg.assign, cfg.loss, cfg.train.epochs)
    cat_ids = list(range(1, COCO_CLASSES + 1))
    run_inference(detector, pool[:warmup], eval_cfg, use_ctr, cat_ids, progress=False)
    clock = PhaseClock(device)
    clock.start()
    results, _ = run_inference(detector, pool[warmup:], eval_cfg, use_ctr, cat_ids, progress=False)
    clock.lap("run_inference")
    coco_eval(synthetic_coco(pool[warmup:], cat_ids), results)
    clock.lap("cocoeval")
    images = batches * eval_cfg.batch_size
    per_image = {k: v / images for k, v in clock.seconds.items()}
    val_s = COCO_VAL_IMAGES * sum(per_image.values())
    figures = {
        "setting": recipe_summary(cfg),
        "images": images,
        "batch_size": eval_cfg.batch_size,
        "score_thr": eval_cfg.score_thr,
        "detections_per_image": len(results) / images,
        "phase_s": clock.seconds,  # run_inference, cocoeval
        "images_per_s": images / clock.seconds["run_inference"],
        "images_per_s_with_cocoeval": images / sum(clock.seconds.values()),
        "coco_val_extrapolated_s": val_s,
        **peak_memory(device),
    }
    del state, detector
    free(device)
    checks = [
        (f"{figures['images_per_s']:.2f} images/s inference; 5,000 COCO val images ~ {val_s / 60:.1f} min",
         math.isfinite(val_s) and val_s > 0),
    ]  # fmt: skip
    return {**figures, **verdict(checks)}


def eval_batches(cfg: RunConfig, count: int) -> list[Batch]:
    """`count` synthetic batches with the metas the post-processing reads (unique image ids, no resize)."""
    source = synthetic_batches(cfg, seed=3)
    out = []
    for i in range(count):
        batch = next(source)
        B = batch.images.shape[0]
        h, w = min(cfg.data.img_scale), max(cfg.data.img_scale)  # the unpadded landscape image
        metas = [
            {"image_id": i * B + j + 1, "img_size": (h, w), "scale_factor": 1.0, "flipped": False}
            for j in range(B)
        ]
        out.append(dataclasses.replace(batch, metas=metas))
    return out


def synthetic_coco(batches: list[Batch], cat_ids: list[int]):
    """An in-memory pycocotools COCO of the batches' GTs (what coco_eval compares with)."""
    from pycocotools.coco import COCO

    images, anns = [], []
    for batch in batches:
        for j, meta in enumerate(batch.metas):
            h, w = meta["img_size"]
            images.append({"id": meta["image_id"], "width": w, "height": h})
            mask = batch.gt_mask[j]  # (G,)
            for box, label in zip(batch.gt_boxes[j][mask].tolist(), batch.gt_labels[j][mask].tolist()):
                x0, y0, x1, y1 = box
                anns.append(
                    {"id": len(anns) + 1, "image_id": meta["image_id"], "category_id": cat_ids[label],
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
                )  # fmt: skip
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c, "name": str(c)} for c in cat_ids],
    }
    coco.createIndex()
    return coco


def recipe_summary(cfg: RunConfig) -> dict:
    m = cfg.model
    return {"depth": m.depth, "fpn_channels": m.fpn_channels, "head": m.head, "assigner": cfg.assign.assigner,
            "img_scale": list(cfg.data.img_scale), "batch_per_gpu": cfg.train.batch_size,
            "norm": m.norm, "frozen_stages": m.frozen_stages, "classes": COCO_CLASSES}  # fmt: skip


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """CUDA: the caching allocator's peaks since reset_peak_memory. CPU: the process's peak RSS so far (Linux
    reports KiB), which covers everything this process did before too."""
    if device.type == "cuda":
        return {
            "peak_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20,
            "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20,
        }
    return {"process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
