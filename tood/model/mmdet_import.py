"""Import the released TOOD and ATSS R-50 FPN checkpoints (mmdetection 2.x / 3.x, fcjian/TOOD) into our format.

A source checkpoint is a dict with its weights under "state_dict" and, usually, a "meta" dict holding the
training config as text (mmdet 3.x / mmengine `meta["cfg"]`, mmdet 2.x and fcjian `meta["config"]`) and the
class names (3.x `meta["dataset_meta"]["classes"]`, 2.x `meta["CLASSES"]`). Every source tensor must land
on exactly one of our tensors with the same shape, and every one of ours must be filled; anything else is
a CheckpointImportError that names the keys.

Key naming, from the module structure of the sources (read, not copied):
  backbone  mmdet ResNet (mmdet/models/backbones/resnet.py): conv1, bn1, layer{1-4}.{block}.{conv1..3,
            bn1..3, downsample.0 (conv), downsample.1 (BN)} -- torchvision's names, so ours differ only by
            the stem / stages containers.
  neck      mmdet FPN (mmdet/models/necks/fpn.py), start_level=1, add_extra_convs='on_output', num_outs=5:
            lateral_convs.{0-2}.conv and fpn_convs.{0-2}.conv for P3-P5, then the extra convs appended
            to fpn_convs: fpn_convs.3 = P6, fpn_convs.4 = P7 (ConvModule without norm: conv.weight/bias).
  T-Head    mmdet TOODHead (mmdet/models/dense_heads/tood_head.py): inter_convs.{i}.conv / .gn,
            {cls,reg}_decomp.layer_attention.{0,2} and .reduction_conv.conv / .gn, tood_cls, tood_reg,
            cls_prob_module.{0,2}, reg_offset_module.{0,2}, scales.{l}.scale (mmcv Scale, a 0-d tensor).
            fcjian/TOOD names three of them differently: {cls,reg}_decomp.la_conv{1,2},
            cls_prob_conv{1,2} and reg_offset_conv{1,2}.
  ATSS head mmdet ATSSHead (mmdet/models/dense_heads/atss_head.py): {cls,reg}_convs.{i}.conv / .gn,
            atss_cls, atss_reg, atss_centerness, scales.{l}.scale. mmdet's ATSS regresses delta-xywh from
            the 8*stride square anchors, i.e. our parallel head with `anchor: based`.

The anchor-free and anchor-based T-Heads have identical keys and shapes; the type is read from the
source's config text (`anchor_type`) or given by the caller.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import Tensor

from tood.config import HEADLINE, RunConfig, load_params, resolve_run_config
from tood.model.backbone import NO_WEIGHTS
from tood.model.detector import Detector
from tood.model.torch_file import UnreadableCheckpoint, read_torch_file

# The `model.pretrained` value that never downloads anything: an imported checkpoint carries every weight.
NO_DOWNLOAD_PRETRAINED = NO_WEIGHTS

# COCO 2017 category ids and names; label l of a COCO detector is COCO_CATEGORIES[l].
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
)  # fmt: skip

# the paper's ablation cell each importable (head, anchor) pair reproduces (params.yaml variant names)
_VARIANT = {("tood", "free"): "tood", ("tood", "based"): "ab_tood", ("parallel", "based"): "ab_parallel_atss"}
_MAX_LISTED = 8  # keys named per problem kind in an error message


class CheckpointImportError(ValueError):
    """The source checkpoint does not fit our model; the message names the offending keys or fields."""


@dataclass(frozen=True)
class SourceLayout:
    """Which head a source checkpoint holds and which naming its T-Head uses."""

    head: Literal["tood", "parallel"]
    naming: Literal["mmdet", "fcjian"]  # fcjian/TOOD's own T-Head names, or mmdetection's (2.x = 3.x)


# ---------------------------------------------------------------------------------------------------
# reading the source


def load_source(path: str | Path, allow_pickle: bool = False) -> dict:
    """torch.load a source checkpoint on the CPU, tensors only unless `allow_pickle` (trusted files only).
    Messages leave out the path: the CLI names the file once."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointImportError("no such file")
    try:
        ckpt = read_torch_file(path, weights_only=not allow_pickle)
    except UnreadableCheckpoint as e:
        advice = " If you trust the file, pass --allow-pickle." if e.needs_pickle else ""
        raise CheckpointImportError(f"{e}{advice}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        keys = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointImportError(f"expected the weights under 'state_dict'; found {keys}")
    return ckpt


def detect_layout(state_dict: dict[str, Tensor]) -> SourceLayout:
    """The head and naming of a source state dict, from the keys only its head has."""
    if "bbox_head.atss_cls.weight" in state_dict:
        return SourceLayout("parallel", "mmdet")
    if "bbox_head.cls_prob_module.0.weight" in state_dict:
        return SourceLayout("tood", "mmdet")
    if "bbox_head.cls_prob_conv1.weight" in state_dict:
        return SourceLayout("tood", "fcjian")
    heads = sorted({k.split(".")[1] for k in state_dict if k.startswith("bbox_head.")})
    raise CheckpointImportError(
        "not a TOOD or ATSS checkpoint: none of bbox_head.cls_prob_module.0.weight (mmdet TOOD), "
        f"bbox_head.cls_prob_conv1.weight (fcjian TOOD), bbox_head.atss_cls.weight (mmdet ATSS); "
        f"its bbox_head modules are {heads[:_MAX_LISTED]}"
    )


def config_text(meta: dict) -> str | None:
    """The training config the source was saved with: mmdet 3.x meta["cfg"], 2.x / fcjian meta["config"]."""
    text = meta.get("cfg", meta.get("config"))
    return text if isinstance(text, str) and text.strip() else None


def anchor_from_config(text: str) -> Literal["free", "based"]:
    """anchor_type of a TOODHead config (`anchor_type='anchor_based'` or `'anchor_type': ...`).

    A config without the field uses the TOODHead default, anchor_free (mmdet 2.x, 3.x and fcjian alike).
    """
    found = set(re.findall(r"anchor_type\W{1,6}(anchor_free|anchor_based)", text))
    if len(found) > 1:
        raise CheckpointImportError(f"the source config sets both anchor types: {sorted(found)}")
    return "based" if found == {"anchor_based"} else "free"


def resolve_anchor(layout: SourceLayout, meta: dict, requested: str | None) -> tuple[str, str]:
    """(anchor type, where it came from): the source's config, else `requested` (--anchor); they must agree."""
    if layout.head == "parallel":  # mmdet ATSSHead always decodes deltas from its anchors
        if requested == "free":
            raise CheckpointImportError("--anchor free: an mmdet ATSS head is anchor-based (delta-xywh)")
        return "based", "ATSSHead (anchor-based by construction)"
    text = config_text(meta)
    if text is None:
        if requested is None:
            raise CheckpointImportError(
                "the source has no config text (meta['cfg'] / meta['config']) to read anchor_type from; "
                "pass --anchor free|based"
            )
        return requested, "--anchor"
    anchor = anchor_from_config(text)
    if requested is not None and requested != anchor:
        raise CheckpointImportError(f"--anchor {requested} contradicts the source config (anchor {anchor})")
    return anchor, "source config"


def check_coco_classes(meta: dict) -> None:
    """Class names in the source's meta, where it has them, must be COCO's 80 in order.

    Compared with '_' read as ' ': mmdetection 1.x named them 'traffic_light', and early 2.x checkpoints
    (ATSS, 2020-02) may still carry those names. That the classifier has 80 outputs is checked with every
    other shape, against our 80-class model.
    """
    names = (meta.get("dataset_meta") or {}).get("classes", meta.get("CLASSES"))
    expected = [name for _, name in COCO_CATEGORIES]
    if names is not None and [str(n).replace("_", " ") for n in names] != expected:
        names = [str(n).replace("_", " ") for n in names]
        diff = next(i for i, (a, b) in enumerate(zip([*names, None], [*expected, None])) if a != b)
        theirs = names[diff] if diff < len(names) else "(none)"
        ours = expected[diff] if diff < len(expected) else "(none)"
        raise CheckpointImportError(
            f"not a COCO detector: the source's class {diff} is {theirs!r} where COCO's is {ours!r} "
            f"({len(names)} classes in its meta)"
        )


# ---------------------------------------------------------------------------------------------------
# key table: our key -> source key


def _stage(m: re.Match) -> str:
    return f"backbone.layer{int(m[1]) + 1}.{m[2]}"


_COMMON_RULES = (
    (r"backbone\.body\.stem\.0\.(.+)", r"backbone.conv1.\1"),
    (r"backbone\.body\.stem\.1\.(.+)", r"backbone.bn1.\1"),
    (r"backbone\.body\.stages\.(\d+)\.(.+)", _stage),  # block internals share torchvision's names
    (r"backbone\.fpn\.lateral\.(\d+)\.(.+)", r"neck.lateral_convs.\1.conv.\2"),
    (r"backbone\.fpn\.output\.(\d+)\.(.+)", r"neck.fpn_convs.\1.conv.\2"),
    (r"backbone\.fpn\.p6\.(.+)", r"neck.fpn_convs.3.conv.\1"),  # after the 3 outputs of C3-C5
    (r"backbone\.fpn\.p7\.(.+)", r"neck.fpn_convs.4.conv.\1"),
)
_TOOD_RULES = (
    (r"head\.inter_convs\.(\d+)\.0\.(.+)", r"bbox_head.inter_convs.\1.conv.\2"),
    (r"head\.inter_convs\.(\d+)\.1\.(.+)", r"bbox_head.inter_convs.\1.gn.\2"),
    (r"head\.(cls|reg)_decomp\.reduction\.(.+)", r"bbox_head.\1_decomp.reduction_conv.conv.\2"),
    (r"head\.(cls|reg)_decomp\.norm\.(.+)", r"bbox_head.\1_decomp.reduction_conv.gn.\2"),
    (r"head\.cls_conv\.(.+)", r"bbox_head.tood_cls.\1"),
    (r"head\.reg_conv\.(.+)", r"bbox_head.tood_reg.\1"),
)
_TOOD_MMDET_RULES = (
    (r"head\.(cls|reg)_decomp\.layer_attention\.([02])\.(.+)", r"bbox_head.\1_decomp.layer_attention.\2.\3"),
    (r"head\.prob_branch\.([02])\.(.+)", r"bbox_head.cls_prob_module.\1.\2"),
    (r"head\.offset_branch\.([02])\.(.+)", r"bbox_head.reg_offset_module.\1.\2"),
)
_TOOD_FCJIAN_RULES = (  # Sequential index 0 / 2 -> conv1 / conv2
    (r"head\.(cls|reg)_decomp\.layer_attention\.0\.(.+)", r"bbox_head.\1_decomp.la_conv1.\2"),
    (r"head\.(cls|reg)_decomp\.layer_attention\.2\.(.+)", r"bbox_head.\1_decomp.la_conv2.\2"),
    (r"head\.prob_branch\.0\.(.+)", r"bbox_head.cls_prob_conv1.\1"),
    (r"head\.prob_branch\.2\.(.+)", r"bbox_head.cls_prob_conv2.\1"),
    (r"head\.offset_branch\.0\.(.+)", r"bbox_head.reg_offset_conv1.\1"),
    (r"head\.offset_branch\.2\.(.+)", r"bbox_head.reg_offset_conv2.\1"),
)
_ATSS_RULES = (
    (r"head\.(cls|reg)_tower\.(\d+)\.0\.(.+)", r"bbox_head.\1_convs.\2.conv.\3"),
    (r"head\.(cls|reg)_tower\.(\d+)\.1\.(.+)", r"bbox_head.\1_convs.\2.gn.\3"),
    (r"head\.cls_conv\.(.+)", r"bbox_head.atss_cls.\1"),
    (r"head\.reg_conv\.(.+)", r"bbox_head.atss_reg.\1"),
    (r"head\.centerness_conv\.(.+)", r"bbox_head.atss_centerness.\1"),
)


def _rules(layout: SourceLayout) -> tuple:
    if layout.head == "parallel":
        return _COMMON_RULES + _ATSS_RULES
    elif layout.naming == "mmdet":
        return _COMMON_RULES + _TOOD_RULES + _TOOD_MMDET_RULES
    return _COMMON_RULES + _TOOD_RULES + _TOOD_FCJIAN_RULES


def key_table(our_state: dict[str, Tensor], layout: SourceLayout) -> dict[str, tuple[str, int | None]]:
    """{source key: (our key, index into our tensor or None)} for every tensor of our model.

    Our per-level scales are one (L,) tensor; the source holds one 0-d `scales.{l}.scale` per level.
    """
    table: dict[str, tuple[str, int | None]] = {}
    rules = _rules(layout)
    for key, value in our_state.items():
        if key == "head.scales":
            table.update({f"bbox_head.scales.{level}.scale": (key, level) for level in range(value.numel())})
            continue
        for pattern, template in rules:
            match = re.fullmatch(pattern, key)
            if match is not None:
                table[template(match) if callable(template) else match.expand(template)] = (key, None)
                break
        else:
            raise CheckpointImportError(f"our tensor {key} has no {layout.naming} {layout.head} counterpart")
    return table


# ---------------------------------------------------------------------------------------------------
# conversion


def convert_state_dict(
    source: dict[str, Tensor], our_state: dict[str, Tensor], layout: SourceLayout
) -> dict[str, Tensor]:
    """A full state dict for our model (with `our_state`'s keys) holding the source's tensors.

    Raises CheckpointImportError naming every source key without a place, every one of ours the source
    lacks and every shape mismatch. BatchNorm step counters (num_batches_tracked) are the one exception:
    FrozenBatchNorm2d has none and eval-mode BatchNorm never reads them, so they are dropped when our
    model has no such buffer.
    """
    table = key_table(our_state, layout)
    unmapped = [k for k in source if k not in table and not _droppable_counter(k, table)]
    missing = [k for k in table if k not in source]
    mismatched = [
        f"{k} {tuple(source[k].shape)} vs ours {_target_shape(our_state, *table[k])}"
        for k in table
        if k in source and not _shapes_match(source[k], our_state, *table[k])
    ]
    problems = [
        _listing("source tensors with no place in our model", unmapped),
        _listing(f"{layout.naming} {layout.head} tensors missing from the source", missing),
        _listing("shape mismatches", mismatched),
    ]
    if any(problems):
        raise CheckpointImportError("; ".join(p for p in problems if p))
    state = {k: v.detach().clone() for k, v in our_state.items()}
    for src_key, (key, index) in table.items():
        value = source[src_key].to(state[key].dtype)
        if index is None:
            state[key] = value.clone()
        else:
            state[key][index] = value.reshape(())
    return state


def export_state_dict(our_state: dict[str, Tensor], layout: SourceLayout) -> dict[str, Tensor]:
    """The inverse of convert_state_dict: our tensors under the source's names (for round trips, cross-checks)."""
    return {
        src_key: (our_state[key] if index is None else our_state[key][index]).detach().clone()
        for src_key, (key, index) in key_table(our_state, layout).items()
    }


def _droppable_counter(src_key: str, table: dict) -> bool:
    prefix, _, leaf = src_key.rpartition(".")
    return leaf == "num_batches_tracked" and f"{prefix}.running_mean" in table


def _target_shape(our_state: dict[str, Tensor], key: str, index: int | None) -> tuple[int, ...]:
    return tuple(our_state[key].shape) if index is None else tuple(our_state[key][index].shape)


def _shapes_match(value: Tensor, our_state: dict[str, Tensor], key: str, index: int | None) -> bool:
    if index is None:
        return tuple(value.shape) == tuple(our_state[key].shape)
    return tuple(value.shape) in ((), (1,))  # mmcv Scale holds a 0-d parameter; accept (1,) too


def _listing(what: str, keys: list[str]) -> str:
    if not keys:
        return ""
    more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return f"{len(keys)} {what}: {', '.join(keys[:_MAX_LISTED])}{more}"


# ---------------------------------------------------------------------------------------------------
# the whole import


def imported_config(params_path: str | Path, head: str, anchor: str) -> RunConfig:
    """The --params file's headline config with the source's head and anchor, its assigner's test-time rule
    (ATSS: scores x centerness) and a `model.pretrained` that downloads nothing."""
    cfg = resolve_run_config(load_params(params_path), HEADLINE, where=str(params_path))
    model = dataclasses.replace(cfg.model, head=head, anchor=anchor, pretrained=NO_DOWNLOAD_PRETRAINED)
    assign = dataclasses.replace(cfg.assign, assigner="tal" if head == "tood" else "atss")
    return dataclasses.replace(cfg, variant=_VARIANT[(head, anchor)], model=model, assign=assign)


def import_checkpoint(
    src: dict, params_path: str | Path, anchor: str | None = None, source_name: str = "source"
) -> dict:
    """A source checkpoint (see load_source) -> a checkpoint tood.engine.inference.load_detector accepts.

    The result holds model, config (imported_config), cat_ids and class_names (COCO's 80), epoch, and a
    summary saying where the weights came from (evaluate_checkpoint wants a finished run's summary).
    """
    state_dict, meta = src["state_dict"], src.get("meta") or {}
    layout = detect_layout(state_dict)
    anchor, anchor_from = resolve_anchor(layout, meta, anchor)
    check_coco_classes(meta)
    cfg = imported_config(params_path, layout.head, anchor)
    detector = Detector(cfg.model, len(COCO_CATEGORIES))
    state = convert_state_dict(state_dict, detector.state_dict(), layout)
    detector.load_state_dict(state)  # strict: the converted dict is exactly our model's
    epoch = meta.get("epoch", cfg.train.epochs)
    return {
        "model": state,
        "config": cfg.to_dict(),
        "cat_ids": [cat_id for cat_id, _ in COCO_CATEGORIES],
        "class_names": [name for _, name in COCO_CATEGORIES],
        "epoch": int(epoch),
        "summary": {
            "imported_from": source_name,
            "source_format": source_format(meta, layout),
            "head": layout.head,
            "anchor": anchor,
            "anchor_from": anchor_from,
            "tensors": len(state_dict),
        },
    }


def source_format(meta: dict, layout: SourceLayout) -> str:
    """A label for the report: which code base wrote the checkpoint, as far as its meta tells."""
    if layout.naming == "fcjian":
        return "fcjian/TOOD"
    if "cfg" in meta or "dataset_meta" in meta:
        return "mmdetection 3.x"
    if "config" in meta or "CLASSES" in meta:
        return "mmdetection 2.x"
    return "mmdetection (no meta)"
