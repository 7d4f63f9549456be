"""abtf_ssd.fileio: whole files or none, the mode a plain open() gives, no temporary file left."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from abtf_ssd.fileio import atomic_output, atomic_write_bytes, atomic_write_json, atomic_write_text


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process umask a test changes."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_each_writer_writes_the_content_and_leaves_only_the_file(tmp_path: Path) -> None:
    assert atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01") == tmp_path / "a.bin"
    assert atomic_write_text(str(tmp_path / "a.txt"), "mAP: 0.5\nü\n") == tmp_path / "a.txt"
    atomic_write_json(tmp_path / "a.json", {"b": np.int64(3), "a": Path("x")}, sort_keys=True, default=str)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "mAP: 0.5\nü\n"
    assert (tmp_path / "a.json").read_text() == '{\n  "a": "x",\n  "b": "3"\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "a.json", "a.txt"]


@pytest.mark.parametrize(
    ("mask", "mode", "expected"),
    [(0o022, 0o644, 0o644), (0o077, 0o644, 0o600), (0o022, 0o755, 0o755), (0o002, 0o644, 0o644)],
)
def test_the_final_mode_is_mode_less_the_umask(
    tmp_path: Path, umask: None, mask: int, mode: int, expected: int
) -> None:
    os.umask(mask)
    assert _mode(atomic_write_bytes(tmp_path / "f", b"x", mode=mode)) == expected
    # Replacing a file of another mode gives the same result.
    (tmp_path / "g").write_bytes(b"old")
    os.chmod(tmp_path / "g", 0o600 if expected != 0o600 else 0o644)
    assert _mode(atomic_write_bytes(tmp_path / "g", b"new", mode=mode)) == expected


def test_the_mode_equals_that_of_a_plain_open(tmp_path: Path, umask: None) -> None:
    os.umask(0o027)
    (tmp_path / "plain").write_text("x")
    assert _mode(atomic_write_text(tmp_path / "atomic", "x")) == _mode(tmp_path / "plain") == 0o640


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "results.json", "old\n")
    with pytest.raises(RuntimeError, match="writer broke"), atomic_output(target) as temp:
        assert temp.parent == tmp_path and temp.name.startswith(".results.json.")
        temp.write_text("half")
        raise RuntimeError("writer broke")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_atomic_output_serves_writers_that_take_a_file_name(tmp_path: Path) -> None:
    with atomic_output(tmp_path / "boxes.npy") as temp, temp.open("wb") as handle:
        np.save(handle, np.arange(4, dtype=np.float32))
    assert np.load(tmp_path / "boxes.npy").tolist() == [0, 1, 2, 3]
    with atomic_output(tmp_path / "copy.json") as temp:
        temp.write_text(json.dumps([1]))
        assert not (tmp_path / "copy.json").exists()  # nothing visible before the end
    assert json.loads((tmp_path / "copy.json").read_text()) == [1]


def test_a_missing_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        atomic_write_text(tmp_path / "nowhere" / "f.txt", "x")
