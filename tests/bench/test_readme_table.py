"""`make bench`'s README table: failed benchmarks are not shown with stale numbers; markers are checked."""

import pytest

from bench.readme_table import END, START, table, update_readme


def test_a_failed_benchmark_is_marked_not_shown_with_its_old_results():
    rendered = table(failed=["label"])
    label_rows = [line for line in rendered.splitlines() if line.startswith("| label |")]
    assert label_rows == ["| label | the last `make bench` run of this benchmark failed (see its output) |  |  |"]
    assert any(line.startswith("| teacher |") and "failed" not in line for line in rendered.splitlines())


def test_readme_is_rewritten_between_the_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold table\n{END}\noutro\n")
    update_readme(readme)
    text = readme.read_text()
    assert text.startswith(f"intro\n{START}\n| stage |") and text.endswith(f"{END}\noutro\n")
    assert "old table" not in text
    readme.write_text(f"intro\n{END}\n{START}\n")
    with pytest.raises(SystemExit, match="markers"):
        update_readme(readme)
    assert readme.read_text() == f"intro\n{END}\n{START}\n"  # untouched


def test_every_committed_result_renders():
    """Each bench/results/*.json the table knows is read by its row renderer (a renamed key would show up here)."""
    rows = [line for line in table().splitlines() if line.startswith("| ")]
    assert not [row for row in rows if "unreadable" in row or "not run yet" in row], rows
