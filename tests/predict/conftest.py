"""Shared predict fixtures: synthetic LMSYS (60 rows) / WSDM (16 rows) test files and tiny exports, built once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    from tiny_fixtures import make_teacher_export

    from arena_dist.stages import synth

    root = tmp_path_factory.mktemp("predict")
    synth.run(synth.Config(output_dir=str(root / "synth"), n_train=0, n_test=60, n_pool=0, n_wsdm_train=0,
                           n_wsdm_test=16, n_pairwise=0, progress=False))
    return {
        "lmsys": root / "synth" / "lmsys" / "test.csv",
        "lmsys_answers": root / "synth" / "lmsys" / "test_answers.csv",
        "wsdm": root / "synth" / "wsdm" / "test.parquet",
        "wsdm_answers": root / "synth" / "wsdm" / "test_answers.parquet",
        "model3": make_teacher_export(root / "m3", seed=1, head_std=2.0, max_length=256),
        "model3b": make_teacher_export(root / "m3b", seed=5, head_std=2.0, max_length=256),
        "model3c": make_teacher_export(root / "m3c", seed=9, head_std=0.5, max_length=256),  # less sure
        "model2": make_teacher_export(root / "m2", seed=2, head_std=2.0, max_length=256, label_mode="2class"),
    }

