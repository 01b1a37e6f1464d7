"""Checkpoint scanning: only directories with a COMPLETE marker count; the latest wins. Pruning keeps the newest
complete ones and never touches what it did not write."""

import pytest

from arena_dist.train.checkpoint import (
    complete_checkpoints,
    latest_complete,
    prune_checkpoints,
    remove_incomplete,
    tag_for,
    write_marker,
)


def test_latest_complete_ignores_incomplete_and_foreign(tmp_path):
    assert latest_complete(tmp_path / "none") is None
    for step in (5, 10):
        (tmp_path / tag_for(step)).mkdir()
        write_marker(tmp_path / tag_for(step), {"step": step, "world_size": 2})
    (tmp_path / tag_for(15)).mkdir()  # crashed mid-save: no marker
    (tmp_path / (tag_for(10) + "_universal")).mkdir()
    write_marker(tmp_path / (tag_for(10) + "_universal"), {"step": 10})
    (tmp_path / "latest").write_text("step_0000015")
    assert [step for step, _, _ in complete_checkpoints(tmp_path)] == [5, 10]
    tag, marker = latest_complete(tmp_path)
    assert tag == "step_0000010" and marker["world_size"] == 2
    assert remove_incomplete(tmp_path, tag_for(15)) and not (tmp_path / tag_for(15)).exists()
    assert not remove_incomplete(tmp_path, tag_for(10)) and (tmp_path / tag_for(10)).exists()


def fabricate(root, steps, universal_of=(), incomplete=()):
    """Checkpoint folders as the teacher writes them: a shard file and a COMPLETE marker (none for `incomplete`)."""
    for step in [*steps, *incomplete]:
        directory = root / tag_for(step)
        directory.mkdir(parents=True)
        (directory / "shard.pt").write_bytes(b"x")
        if step not in incomplete:
            write_marker(directory, {"step": step, "world_size": 2})
    for step in universal_of:
        directory = root / (tag_for(step) + "_universal")
        directory.mkdir()
        write_marker(directory, {"step": step, "universal_of": tag_for(step)})


def names(root):
    return sorted(entry.name for entry in root.iterdir())


def test_prune_keeps_the_newest_complete_checkpoints(tmp_path):
    fabricate(tmp_path, [10, 20, 30, 40])
    assert prune_checkpoints(tmp_path, 2) == [tag_for(10), tag_for(20)]
    assert names(tmp_path) == [tag_for(30), tag_for(40)]
    assert prune_checkpoints(tmp_path, 2) == []
    assert prune_checkpoints(tmp_path, 1) == [tag_for(30)]
    assert names(tmp_path) == [tag_for(40)] and latest_complete(tmp_path)[0] == tag_for(40)
    with pytest.raises(ValueError, match="keep_last"):
        prune_checkpoints(tmp_path, 0)
    assert prune_checkpoints(tmp_path / "no_checkpoints_yet", 1) == []


def test_prune_leaves_what_it_did_not_write(tmp_path):
    fabricate(tmp_path, [10, 20, 30], incomplete=[5])
    (tmp_path / "latest").write_text("step_0000010")
    (tmp_path / "notes").mkdir()
    (tmp_path / "step_12").mkdir()  # not the 7-digit tag pattern
    (tmp_path / "step_0000001_universal").mkdir()  # no marker: not known to be a conversion we wrote
    (tmp_path / ".step_0000003_universal.ab12cd34").mkdir()  # ensure_universal's work folder
    foreign = tmp_path / "step_0000002_universal"  # a marker that names another source
    foreign.mkdir()
    write_marker(foreign, {"universal_of": "elsewhere"})
    before = set(names(tmp_path))
    assert prune_checkpoints(tmp_path, 1) == [tag_for(10), tag_for(20)]
    assert set(names(tmp_path)) == before - {tag_for(10), tag_for(20)}
    assert (tmp_path / tag_for(5) / "shard.pt").exists()  # a folder without its marker is ignored


def test_prune_removes_a_universal_conversion_with_its_source(tmp_path):
    fabricate(tmp_path, [10, 20, 30], universal_of=[10, 30])
    assert prune_checkpoints(tmp_path, 2) == [tag_for(10) + "_universal", tag_for(10)]
    assert names(tmp_path) == [tag_for(20), tag_for(30), tag_for(30) + "_universal"]
    assert prune_checkpoints(tmp_path, 1) == [tag_for(20)]
    assert names(tmp_path) == [tag_for(30), tag_for(30) + "_universal"]


def test_resume_source_survives_until_a_newer_checkpoint_is_complete(tmp_path):
    fabricate(tmp_path, [10, 20], universal_of=[20], incomplete=[30])  # resumed from 20 (universal), 30 crashed
    assert latest_complete(tmp_path)[0] == tag_for(20)
    assert prune_checkpoints(tmp_path, 1) == [tag_for(10)]
    assert names(tmp_path) == [tag_for(20), tag_for(20) + "_universal", tag_for(30)]
    write_marker(tmp_path / tag_for(30), {"step": 30, "world_size": 1})  # every rank saved: now it counts
    assert prune_checkpoints(tmp_path, 1) == [tag_for(20) + "_universal", tag_for(20)]
    assert names(tmp_path) == [tag_for(30)]


def test_deletion_cut_short_never_looks_complete(tmp_path, monkeypatch):
    """A crash mid-delete leaves a hidden folder that matches no tag; the next prune removes it."""
    import shutil

    fabricate(tmp_path, [10, 20, 30], universal_of=[10])

    def crash(path, *args, **kwargs):
        raise KeyboardInterrupt("killed mid-delete")

    monkeypatch.setattr(shutil, "rmtree", crash)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoints(tmp_path, 1)
    monkeypatch.undo()
    assert [tag for _, tag, _ in complete_checkpoints(tmp_path)] == [tag_for(10), tag_for(20), tag_for(30)]
    assert not (tmp_path / (tag_for(10) + "_universal")).exists()  # renamed away first, complete source still there
    assert (tmp_path / ".step_0000010_universal.pruning" / "COMPLETE").exists()
    assert prune_checkpoints(tmp_path, 1) == [tag_for(10), tag_for(20)]
    assert names(tmp_path) == [tag_for(30)]


def test_both_stages_spell_keep_last_the_same(tmp_path):
    from arena_dist.config import load_config
    from arena_dist.distill.config import StudentConfig
    from arena_dist.errors import ConfigError
    from arena_dist.stages import teacher

    teacher_sets = [f"data.dataset_dir={tmp_path}", f"ray.storage_path={tmp_path}"]
    student_sets = ["output.run_dir=x", "data.dataset_dir=d", "model.arch=llama"]
    for config_class, config_file, sets in ((teacher.Config, "launch/configs/teacher_tiny.yaml", teacher_sets),
                                            (StudentConfig, None, student_sets)):
        assert load_config(config_class, config_file, sets).training.keep_last == 2
        assert load_config(config_class, config_file, sets + ["training.keep_last=1"]).training \
            .keep_last == 1
        with pytest.raises(ConfigError, match="training.keep_last"):
            load_config(config_class, config_file, sets + ["training.keep_last=0"])
