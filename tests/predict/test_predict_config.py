"""predict's config: the ensemble, its refinement passes and the time budget (seconds or an ISO-8601 deadline)."""

import time
from datetime import datetime, timedelta, timezone

import pytest

from arena_dist.config import load_config
from arena_dist.errors import ConfigError
from arena_dist.stages.predict import Config, resolve_budget

BASE = ["test_file=t.csv", "output_dir=out"]


def config(*sets: str) -> Config:
    return load_config(Config, None, [*BASE, *sets])


def passes(cfg: Config) -> list[tuple]:
    return [(p.member, p.swap, p.fraction) for p in cfg.refine]


def test_default_refinement_is_swap_tta_then_each_further_member_in_both_orders():
    assert passes(config("models=[{export_path: a}]")) == [(0, True, 1.0)]
    three = config("models=[{export_path: a}, {export_path: b, weight: 2}, {export_path: c}]")
    assert passes(three) == [(0, True, 1.0), (1, False, 1.0), (1, True, 1.0), (2, False, 1.0), (2, True, 1.0)]
    assert [m.weight for m in three.models] == [1.0, 2.0, 1.0]
    assert passes(config("models=[{export_path: a}]", "refine=[]")) == []  # member 0's direct pass only


@pytest.mark.parametrize("sets, message", [
    (["models=[]"], "models"),
    (["models=[{export_path: a, weight: 0}]"], "models.0.weight"),
    (["models=[{export_path: a}]", "refine=[{member: 1, swap: true}]"], "refine.0.member: 1, but models has 1"),
    (["models=[{export_path: a}]", "refine=[{member: 0, swap: false}]"], "refine.0: member 0's direct order is"),
    (["models=[{export_path: a}]", "refine=[{member: 0, swap: true}, {member: 0, swap: true, fraction: 0.5}]"],
     "refine.1: member 0 swapped is listed twice"),
    (["models=[{export_path: a}]", "refine=[{member: 0, swap: true, fraction: 0}]"], "refine.0.fraction"),
    (["models=[{export_path: a}]", "time_budget=-5"], "time_budget must be positive"),
    (["models=[{export_path: a}]", "time_budget=tomorrow"], "time_budget 'tomorrow' is neither seconds nor"),
    (["models=[{export_path: a}]", "model={export_path: b}"], "model: unknown key"),  # old spellings: gone
    (["models=[{export_path: a}]", "tta={mode: all}"], "tta: unknown key"),
])
def test_bad_settings_are_one_line_errors_naming_the_key(sets, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config(*sets)


def test_budget_in_seconds_or_as_a_deadline():
    started = time.monotonic()
    deadline, margin = resolve_budget(config("models=[{export_path: a}]", "time_budget=100"), started)
    assert deadline == started + 100 and margin == pytest.approx(5.0)  # 5% of the budget
    deadline, margin = resolve_budget(config("models=[{export_path: a}]", "time_budget=36000"), started)
    assert margin == 60.0  # at most a minute
    at = (datetime.now(timezone.utc) + timedelta(seconds=200)).isoformat()
    deadline, margin = resolve_budget(config("models=[{export_path: a}]", f"time_budget={at}",
                                             "safety_margin=3"), started)
    assert deadline - time.monotonic() == pytest.approx(200, abs=5) and margin == 3.0
    local = (datetime.now() + timedelta(seconds=300)).replace(microsecond=0).isoformat()  # no offset: local time
    deadline, _ = resolve_budget(config("models=[{export_path: a}]", f"time_budget={local}"), started)
    assert deadline - time.monotonic() == pytest.approx(300, abs=5)
    assert resolve_budget(config("models=[{export_path: a}]"), started) == (None, 0.0)
