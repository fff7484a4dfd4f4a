"""Attacker, benign fine-tuning and defender never share a prompt: the paper's defender has no access to
any model's training data. Checked over the embedded and table1 grids at tiny scale, seeds 0–19, through
the functions the jobs themselves draw their prompts with."""

from __future__ import annotations

import pytest

from amdet.job import shallow_prompts
from attacks.job import attack_prompts
from benign_ft.job import benign_prompts
from core.prompts import make_prompt_source
from core.prompts.sources import role_of
from sweeps.grid import compose_config, plan

SEEDS = range(20)
TINY = "encoder=tiny-clip,tiny-siglip,tiny-longclip"


# the grid coordinates that decide no prompt draw (checked below): one config per other combination
NO_PROMPTS = ("attack", "attack.triggers.length", "attack.triggers.level", "seed")


def role_sets(experiment: str, *overrides: str) -> dict[str, set[str]]:
    """Every prompt each role draws in the experiment's grid (scored and calibration cells), all seeds."""
    _, scored, calibration = plan([f"experiment={experiment}", *overrides, f"seed=range(0,{len(SEEDS)})"])
    drawn = {"attacker": set(), "benign": set(), "defender": set()}
    groups: dict[tuple, set[int]] = {}
    for cell in scored + calibration:
        keys = dict(o.split("=", 1) for o in cell.overrides)
        groups.setdefault(tuple(sorted((k, v) for k, v in keys.items() if k not in NO_PROMPTS)), set()).add(int(keys["seed"]))
    for rest, seeds in groups.items():
        cfg = compose_config([f"{k}={v}" for k, v in rest])
        for seed in seeds:
            cfg.seed = seed
            drawn["attacker"].update(*attack_prompts(cfg))
            drawn["benign"].update(*benign_prompts(cfg))
            drawn["defender"].update(shallow_prompts(cfg)[0])
    return drawn


def test_the_skipped_coordinates_draw_no_prompts():
    """What NO_PROMPTS leaves out changes no draw: the same prompts for another paradigm and length."""
    a = compose_config(["encoder=tiny-clip", "attack=text_on_text", "attack.triggers.length=1", "seed=3"])
    b = compose_config(["encoder=tiny-clip", "attack=text_on_pair", "attack.triggers.length=15", "seed=3"])
    assert attack_prompts(a) == attack_prompts(b) and benign_prompts(a) == benign_prompts(b)
    assert shallow_prompts(a)[0] == shallow_prompts(b)[0]


@pytest.mark.parametrize("experiment,overrides", [("embedded", ()), ("table1", (TINY,))])
def test_roles_draw_disjoint_prompts(experiment, overrides):
    drawn = role_sets(experiment, *overrides)
    assert all(drawn.values())
    assert not drawn["attacker"] & drawn["defender"], "the shallow set holds attack training prompts"
    assert not drawn["benign"] & drawn["defender"], "the shallow set holds benign fine-tuning captions"
    assert not drawn["attacker"] & drawn["benign"]


def test_partition_is_by_text_and_refuses_a_bad_share():
    source = make_prompt_source({"source": "synthetic", "size": 2000,
                                 "partition": {"attacker": 0.25, "benign": 0.25, "defender": 0.5}})
    parts = {r: set(source.pool(r)) for r in ("attacker", "benign", "defender")}
    assert sum(map(len, parts.values())) == len(source.pool()) and 0.4 < len(parts["defender"]) / 2000 < 0.6
    other = make_prompt_source({"source": "synthetic", "size": 3000, "seed": 1,
                                "partition": {"attacker": 0.25, "benign": 0.25, "defender": 0.5}})
    assert all(role_of(p, other.partition) == "defender" for p in parts["defender"]), "a prompt's role follows its text"
    with pytest.raises(ValueError, match="prompts.partition"):
        make_prompt_source({"source": "synthetic", "partition": {"attacker": 0.5, "defender": 0.6}})
    with pytest.raises(ValueError, match="defender.s share"):
        source.load(1500, role="defender")
