"""Run keys (tood.engine.checkpoint.work_dir_for) of the grid's existing runs do not move because issue 20
added settings: the settings part of every key is pinned to its value before those settings existed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from tood.config import RunConfig, load_params, resolve_run_config, variant_names
from tood.engine.checkpoint import KEYED_ONLY_WHEN_SET, _flatten, training_fingerprint

REPO = Path(__file__).resolve().parents[1]

# sha256[:16] of json.dumps(training_fingerprint(cfg), sort_keys=True) per variant, computed with the code of
# main at 9e3a73a (before issue 20). work_dir_for hashes this fingerprint with the variant, seed and tood/
# source: the source part changes with any code change, as it should; this part must not.
PINNED = {
    "params.yaml": {
        "tood": "0ea8df94d85c232e", "parallel_atss": "213e9db621922530", "thead_atss": "4383b6d1b8d6b864",
        "parallel_tal": "c7e568ff27e045fc", "ab_parallel_atss": "12df04b16917a64c",
        "ab_thead_atss": "72d71bef4eaa7987", "ab_tood": "ba0ebac663462b5c", "a05_b2": "d17270f02627f9e8",
        "a05_b4": "5770da28ae589280", "a05_b6": "6e3356c7626aac17", "a1_b8": "cff3b8feb8eae4f3",
        "a15_b8": "7874139344b4e2fd",
    },
    "profiles/quick.yaml": {
        "tood": "4a469b1d14addfa8", "parallel_atss": "ff30feed29be4258", "thead_atss": "398890a48ab17ab8",
        "parallel_tal": "a3dbf2a24f3eb4c7", "ab_parallel_atss": "54ea44657e7d6aec",
        "ab_thead_atss": "5e252aa57ceccd32", "ab_tood": "8a588af4badcf89e", "a05_b2": "ba7704f38e9b32b2",
        "a05_b4": "5c40f692f7ac5fb7", "a05_b6": "59ac4b6a2f1849db", "a1_b8": "dd1a5a727a86e239",
        "a15_b8": "2981a1a91c85a721",
    },
    "profiles/coco.yaml": {
        "tood": "09c90e4f1d0a40a5", "parallel_atss": "c6fb78f563482c17", "thead_atss": "330b2f94cbd2f704",
        "parallel_tal": "18318cc28113043c", "ab_parallel_atss": "673c83e757f5f527",
        "ab_thead_atss": "c8cf63786d961fdd", "ab_tood": "857fc49370c11068", "a05_b2": "49dd45f5f899af3e",
        "a05_b4": "d3f5b1b23bdcc556", "a05_b6": "a33f8a7749fafd92", "a1_b8": "2c22c335e56883b2",
        "a15_b8": "05704fbb9aacc81e",
    },
}  # fmt: skip


def _digest(cfg: RunConfig) -> str:
    return hashlib.sha256(
        json.dumps(training_fingerprint(cfg.to_dict()), sort_keys=True).encode()
    ).hexdigest()[:16]


# the default's budget as it was when the keys were pinned: issue 16 then moved it to 24 epochs, which changes
# every key, as a new budget should; this test is about the settings issue 20 added, not the budget
PINNED_BUDGET = {"params.yaml": {"train": {"epochs": 12}, "optim": {"steps": [8, 11]}}}


@pytest.mark.parametrize("profile", sorted(PINNED))
def test_existing_runs_keep_their_keys(profile):
    params = load_params(REPO / profile)
    for section, values in PINNED_BUDGET.get(profile, {}).items():
        params[section] = {**params[section], **values}
    assert {v: _digest(resolve_run_config(params, v)) for v in PINNED[profile]} == PINNED[profile]


@pytest.mark.parametrize("profile", ["profiles/extended.yaml", "profiles/quick_extended.yaml"])
def test_the_extended_grids_share_the_default_runs_keys(profile):
    """The default variants inside an extended profile are the same runs: the grid adds, never re-trains."""
    base = "params.yaml" if profile == "profiles/extended.yaml" else "profiles/quick.yaml"
    params, base_params = load_params(REPO / profile), load_params(REPO / base)
    base_keys = {v: _digest(resolve_run_config(base_params, v)) for v in variant_names(base_params)}
    assert {v: _digest(resolve_run_config(params, v)) for v in base_keys} == base_keys
    keys = {_digest(resolve_run_config(params, v)) for v in variant_names(params)}
    assert len(keys) == len(variant_names(params))  # and every new variant is a run of its own


def test_the_written_out_defaults_are_the_dataclass_defaults():
    defaults = _flatten(RunConfig(variant="x").to_dict())
    for key, value in KEYED_ONLY_WHEN_SET.items():
        assert json.dumps(defaults[key]) == json.dumps(value), key


def test_a_new_setting_away_from_its_default_changes_the_key():
    cfg = resolve_run_config(load_params(REPO / "params.yaml"), "parallel_atss")
    moved = [
        dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, tap=True)),
        dataclasses.replace(cfg, assign=dataclasses.replace(cfg.assign, fovea_sigma=0.3)),
        dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, cls_target="iou")),
    ]
    assert len({_digest(c) for c in [cfg, *moved]}) == 4
