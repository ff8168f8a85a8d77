"""Per-variant seeds (`variants.<name>.seeds`, issue 10: "the α/β cells may use fewer seeds if the table
says so") and the top-level `trial` flag: what the config accepts, what it rejects, and that DVC re-runs
a variant's evaluate stage when its seeds change."""

from pathlib import Path

import pytest
import yaml

from tood.config import HEADLINE, ConfigError, load_params, resolve_run_config

REPO = Path(__file__).resolve().parents[1]


def _params(**variant_a1_b8) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text()) | {"seeds": [0, 1, 2]}
    params["variants"]["a1_b8"] |= variant_a1_b8
    return params


def test_a_variant_may_run_on_its_own_seeds_and_the_others_keep_the_top_level_list():
    params = _params(seeds=[0])
    assert resolve_run_config(params, "a1_b8").seeds == (0,)
    assert resolve_run_config(params, "a1_b8").assign.beta == 8.0  # its other overrides still apply
    assert resolve_run_config(params, "parallel_atss").seeds == (0, 1, 2)
    assert resolve_run_config(params, HEADLINE).seeds == (0, 1, 2)


@pytest.mark.parametrize(
    "variant_seeds, needles",
    [
        ([], ["variants.a1_b8.seeds", "empty"]),
        ([0, 0], ["variants.a1_b8.seeds", "[0, 0]", "repeats"]),
        ("0,1", ["variants.a1_b8.seeds", "'0,1'", "list"]),
        ([0, "x"], ["variants.a1_b8.seeds[1]", "'x'", "int"]),
    ],
)
def test_bad_variant_seeds_name_the_file_key_and_value(variant_seeds, needles):
    with pytest.raises(ConfigError) as err:
        resolve_run_config(_params(seeds=variant_seeds), "a1_b8", where="params.yaml")
    message = str(err.value)
    assert message.startswith("params.yaml: ")
    for needle in needles:
        assert needle in message, message


def test_the_headline_takes_only_the_top_level_seeds():
    params = _params()
    params["headline"]["seeds"] = [0]
    with pytest.raises(ConfigError, match=r"params\.yaml: headline\.seeds: set the top-level `seeds`"):
        resolve_run_config(params, HEADLINE, where="params.yaml")


def test_top_level_seeds_may_not_repeat():
    with pytest.raises(ConfigError, match=r"seeds: \[1, 1\] repeats a seed"):
        resolve_run_config(_params() | {"seeds": [1, 1]}, HEADLINE)


def test_trial_is_an_accepted_top_level_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_params() | {"trial": True}))
    assert load_params(path)["trial"] is True


def test_evaluate_stages_depend_on_their_variant_entry():
    """A `seeds:` change inside variants.<name> must re-run that variant's evaluate stage (and train)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert "variants.${key}" in stages["evaluate"]["do"]["params"]
    assert "variants.${key}" in stages["train"]["do"]["params"]
    assert "seeds" in stages["evaluate_tood"]["params"]
