import pytest

from arena_dist.io import atomic_directory, atomic_path, atomic_write_json, sha256_file


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert target.read_text().strip().endswith("}") and '"a": 2' in target.read_text()
    assert len(sha256_file(target)) == 64


def test_atomic_directory(tmp_path):
    target = tmp_path / "d"
    with atomic_directory(target) as tmp:
        (tmp / "f").write_text("x")
        assert not target.exists()
    assert (target / "f").read_text() == "x"
    with pytest.raises(ValueError):
        with atomic_directory(target) as tmp:
            (tmp / "g").write_text("y")
            raise ValueError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"] and not (target / "g").exists()


def test_atomic_files_get_umask_permissions(tmp_path):
    import os

    target = atomic_write_json(tmp_path / "p.json", {})
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


# ------------------------------------------------------------------------------------ ownership and crash safety
import os  # noqa: E402

from arena_dist import io as adio  # noqa: E402
from arena_dist.errors import InputError  # noqa: E402


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_atomic_directory_refuses_a_directory_it_did_not_create(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "train.csv").write_text("the user's raw data")
    with pytest.raises(InputError, match="did not write.*train.csv"):
        with atomic_directory(target) as tmp:
            (tmp / "f").write_text("x")
    assert (target / "train.csv").read_text() == "the user's raw data"
    assert _tree(tmp_path) == ["data", "data/train.csv"]  # no temporary tree left behind


def test_atomic_directory_replaces_its_own_output_and_marks_it(tmp_path):
    target = tmp_path / "d"
    with atomic_directory(target) as tmp:
        (tmp / "old").write_text("1")
    assert adio.is_project_output(target)
    with atomic_directory(target) as tmp:
        (tmp / "new").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == [adio.OWNER_MARKER, "new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_atomic_directory_checks_ownership_again_before_the_swap(tmp_path):
    target = tmp_path / "d"
    with pytest.raises(InputError):
        with atomic_directory(target) as tmp:
            target.mkdir()  # someone else's files appear while the tree is being built
            (target / "theirs.txt").write_text("keep")
            (tmp / "f").write_text("x")
    assert (target / "theirs.txt").read_text() == "keep"


def test_the_exchange_is_atomic_on_linux(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    assert adio._exchange(a, b)
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_a_crash_between_the_two_renames_keeps_the_old_tree(tmp_path, monkeypatch):
    """Where no atomic exchange exists the swap is two renames; a crash between them leaves the old tree under
    a fixed backup name, and the next claim or swap puts it back."""
    target = tmp_path / "d"
    with atomic_directory(target) as tmp:
        (tmp / "version").write_text("old")
    monkeypatch.setattr(adio, "_exchange", lambda a, b: False)
    real_rename, calls = os.rename, []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the renames")
        real_rename(src, dst)

    monkeypatch.setattr(adio.os, "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as tmp:
            (tmp / "version").write_text("new")
    monkeypatch.setattr(adio.os, "rename", real_rename)
    assert not target.exists() and (tmp_path / ".d.replaced" / "version").read_text() == "old"
    adio.check_replaceable(target)  # what every claim and swap runs first
    assert (target / "version").read_text() == "old"
    with atomic_directory(target) as tmp:  # and the two-rename swap works when nothing interrupts it
        (tmp / "version").write_text("new")
    assert (target / "version").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_claim_output_dir(tmp_path):
    fresh = adio.claim_output_dir(tmp_path / "a" / "b")
    assert adio.is_project_output(fresh)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert adio.is_project_output(adio.claim_output_dir(empty))
    assert adio.claim_output_dir(fresh) == fresh  # ours: claimed again
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="notes.txt"):
        adio.claim_output_dir(foreign)
    assert not adio.is_project_output(foreign)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        adio.claim_output_dir(a_file)


@pytest.mark.parametrize("mask", [0o077, 0o022, 0o002])
def test_outputs_follow_the_umask_which_is_never_changed(tmp_path, monkeypatch, mask):
    previous = os.umask(mask)
    try:
        monkeypatch.setattr(os, "umask", lambda *_: pytest.fail("the process umask must not be touched"))
        file = atomic_write_json(tmp_path / "m.json", {"a": 1})
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "f").write_text("x")
        claimed = adio.claim_output_dir(tmp_path / "out")
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert file.stat().st_mode & 0o777 == 0o666 & ~mask
    for path in (tmp_path / "d", tmp_path / "d" / "sub", claimed):
        assert path.stat().st_mode & 0o777 == 0o777 & ~mask, path
    assert (tmp_path / "d" / "f").stat().st_mode & 0o777 == 0o666 & ~mask


def test_json_is_always_valid(tmp_path):
    import json

    path = atomic_write_json(tmp_path / "m.json", {"loss": float("nan"), "rows": [1.0, float("inf")], "n": 3})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == {
        "loss": None, "rows": [1.0, None], "n": 3}
