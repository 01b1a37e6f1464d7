import pytest

from arena_dist import cli


def test_every_stage_has_a_module_with_config_and_run():
    missing = []
    for name in cli.STAGES:
        try:
            module = cli.stage_module(name)
        except ModuleNotFoundError:
            missing.append(name)
            continue
        assert hasattr(module, "Config") and callable(module.run), name
    assert not missing, f"stages without a module: {missing}"


def test_bad_key_is_one_line_naming_key_and_file(tmp_path, capsys):
    config = tmp_path / "synth.yaml"
    config.write_text("n_train: 10\nn_trian: 5\n")
    assert cli.main(["synth", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "n_trian" in err and str(config) in err and "unknown key" in err


def test_override_out_of_range(capsys):
    assert cli.main(["synth", "--set", "n_train=-1"]) == 2
    assert "n_train" in capsys.readouterr().err


def test_summary_written_when_asked(tmp_path, monkeypatch):
    summary = tmp_path / "summary.json"
    monkeypatch.setenv("ARENA_DIST_SUMMARY", str(summary))
    out = tmp_path / "synth"
    args = ["synth", "--set", f"output_dir={out}", "--set", "n_train=30", "--set", "n_test=10", "--set", "n_pool=10",
            "--set", "n_wsdm_train=10", "--set", "n_wsdm_test=10", "--set", "n_pairwise=0"]
    assert cli.main(args) == 0
    assert '"bayes_log_loss"' in summary.read_text()


@pytest.mark.parametrize("name", ["synth", "prepare"])
def test_help_lists_stage(name, capsys):
    with pytest.raises(SystemExit):
        cli.main([name, "--help"])
    assert "--config" in capsys.readouterr().out
