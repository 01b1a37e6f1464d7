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
