"""`arena-dist plan` end to end: config -> table on stdout + plan.json + resolved config; bad input is one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from arena_dist.cli import main
from arena_dist.config import load_config
from arena_dist.errors import ConfigError
from arena_dist.stages import plan

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("config_file", sorted((REPO / "launch" / "configs").glob("plan_*.yaml")))
def test_shipped_plan_configs_run(config_file, tmp_path, capsys):
    assert main(["plan", "--config", str(config_file), "--set", f"out_dir={tmp_path}"]) == 0
    written = json.loads((tmp_path / "plan.json").read_text())
    assert (tmp_path / "resolved_config.yaml").exists()
    config = load_config(plan.Config, config_file)
    sections = {name for name in ("teacher", "label", "student", "submission") if getattr(config, name) is not None}
    assert sections and sections <= set(written)
    assert "fits:" in capsys.readouterr().out


def test_shipped_submission_plan_through_the_cli(tmp_path, capsys):
    """2xT4, Gemma-2-9B and Qwen2.5-14B in 4 bits: plan.json, the printed table and the stage record agree."""
    config_file = REPO / "launch" / "configs" / "plan_submission_2xt4.yaml"
    assert main(["plan", "--config", str(config_file), "--set", f"out_dir={tmp_path}"]) == 0
    sub = json.loads((tmp_path / "plan.json").read_text())["submission"]
    assert [m["model"] for m in sub["models"]] == ["google/gemma-2-9b-it", "Qwen/Qwen2.5-14B-Instruct"]
    assert sub["gpu"] == "Tesla-T4-16GB" and sub["devices"] == 2 and sub["dtype"] == "fp16"
    assert sub["hours"] == pytest.approx(sub["setup_hours"] + sum(m["hours"] for m in sub["models"]))
    assert sub["fits"] and sub["margin_hours"] == pytest.approx(9.0 - sub["hours"])
    assert all(m["memory"]["fits"] and m["memory"]["total_gib"] < 15 for m in sub["models"])
    out = capsys.readouterr().out
    assert f"total {sub['hours']:.2f} h" in out and "fits: yes" in out
    record = json.loads((tmp_path / "stage.json").read_text())
    assert record["headline"] == "submission_hours"
    assert record["metrics"]["submission_hours"] == pytest.approx(sub["hours"])
    assert record["metrics"]["submission_fits"] == 1.0
    # Qwen on every row no longer fits: the flag flips and the margin turns negative
    assert main(["plan", "--config", str(config_file), "--set", f"out_dir={tmp_path / 'all'}",
                 "--set", "submission.models.1.rows_share=1.0"]) == 0
    record = json.loads((tmp_path / "all" / "stage.json").read_text())
    assert record["metrics"]["submission_fits"] == 0.0 and record["metrics"]["submission_margin_hours"] < 0


def test_unknown_submission_gpu_is_a_one_line_error(tmp_path, capsys):
    config_file = REPO / "launch" / "configs" / "plan_submission_2xt4.yaml"
    assert main(["plan", "--config", str(config_file), "--set", f"out_dir={tmp_path}",
                 "--set", "submission.gpu=p100"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "submission.gpu: unknown GPU 'p100'" in err


def test_run_returns_the_plan_and_flags_what_does_not_fit(tmp_path):
    config = load_config(plan.Config, overrides=[f"out_dir={tmp_path}", "cluster.nodes=2", "student=null",
                                                  "label=null"])
    two = plan.run(config)
    assert not two["teacher"]["memory"]["fits"]  # 70B full FT, ZeRO-3, 16 x 80 GiB: states alone ~77 GiB
    config = load_config(plan.Config, overrides=[f"out_dir={tmp_path}", "cluster.nodes=2", "student=null",
                                                  "label=null", "teacher.training.offload=optimizer"])
    offloaded = plan.run(config)
    assert offloaded["teacher"]["memory"]["fits"]
    assert offloaded["teacher"]["memory"]["cpu_per_node_gib"] > two["teacher"]["memory"]["cpu_per_node_gib"]
    assert json.loads((tmp_path / "plan.json").read_text()) == json.loads(json.dumps(offloaded))


def test_explicit_dims_without_a_name(tmp_path):
    dims = ["layers=2", "hidden=64", "heads=4", "kv_heads=2", "intermediate=128", "vocab=1000"]
    config = load_config(plan.Config, overrides=[f"out_dir={tmp_path}", "student=null", "label=null",
                                                  "teacher.model.name=null"]
                         + [f"teacher.model.{d}" for d in dims])
    result = plan.run(config)
    expected = 1000 * 64 + 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64) + 64 + 3 * 64
    assert result["teacher"]["params"]["total"] == expected


def test_bad_values_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="teacher.training.zero_stage"):
        load_config(plan.Config, overrides=["teacher.training.zero_stage=4"])
    with pytest.raises(ConfigError, match="model.name"):
        plan.run(load_config(plan.Config, overrides=[f"out_dir={tmp_path}", "teacher.model.name=acme/x"]))
    with pytest.raises(ConfigError, match="zero_stage 3"):
        plan.run(load_config(plan.Config, overrides=[f"out_dir={tmp_path}", "teacher.training.zero_stage=2",
                                                      "teacher.training.offload=optimizer+params"]))


def test_planner_imports_no_heavy_stack():
    code = ("import sys, arena_dist.stages.plan, arena_dist.planning.table; "
            "print(sorted(m for m in ('torch', 'deepspeed', 'ray', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
