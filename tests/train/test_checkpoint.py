"""Checkpoint scanning: only directories with a COMPLETE marker count; the latest wins."""

from arena_dist.train.checkpoint import (
    complete_checkpoints,
    latest_complete,
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
