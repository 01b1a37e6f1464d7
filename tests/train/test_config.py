"""One config dialect: the teacher's and the student's configs are made of the same section types."""

import pytest

from arena_dist.config import load_config
from arena_dist.errors import ConfigError
from arena_dist.stages import student, teacher
from arena_dist.train import config as shared

SECTIONS = {"data": shared.DataSettings, "training": shared.TrainingSettings, "ray": shared.RaySettings,
            "output": shared.OutputSettings}


def test_shared_sections_are_the_same_types():
    for stage in (teacher.Config, student.Config):
        fields = stage.model_fields
        for name, base in SECTIONS.items():
            assert issubclass(fields[name].annotation, base), (stage, name)
        assert fields["model"].annotation is shared.ModelConfig and fields["format"].annotation is shared.FormatConfig
    # a shared setting has one spelling and one default meaning in both stages
    for name in ("clip", "eval_every", "checkpoint_every", "warmup_steps", "keep_last", "schedule", "threads"):
        assert name in student.Config.model_fields["training"].annotation.model_fields
    assert set(shared.DataSettings.model_fields) <= set(student.Config.model_fields["data"].annotation.model_fields)


@pytest.mark.parametrize("old,stage", [("run_dir=x", student.Config), ("tokenizer=local", student.Config),
                                       ("data.eval_fold=0", student.Config), ("data.eval_max_rows=5", student.Config),
                                       ("training.warmup_ratio=0.1", student.Config),
                                       ("training.eval_max_tokens=100", student.Config),
                                       ("data.swap_augment=true", student.Config),
                                       ("data.swap_augment=true", teacher.Config),
                                       ("training.clip=0", teacher.Config),
                                       ("training.eval_every=0", teacher.Config)])
def test_old_spellings_are_refused(old, stage):
    base = ["output.run_dir=x", "data.dataset_dir=d", "model.arch=llama"]
    with pytest.raises(ConfigError):
        load_config(stage, None, base + [old])
    load_config(stage, None, base)


def test_null_means_off():
    base = ["output.run_dir=x", "data.dataset_dir=d", "model.arch=llama"]
    for stage in (teacher.Config, student.Config):
        config = load_config(stage, None, base + ["training.clip=null", "training.eval_every=null"])
        assert config.training.clip is None and config.training.eval_every is None
