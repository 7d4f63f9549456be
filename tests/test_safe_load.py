"""The restricted unpickler: numpy arrays load, anything that could run code is refused unrun."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from abtf_ssd.data.preprocess import (
    SafeUnpickleError,
    SampleFormatError,
    UnsafePickleError,
    load_sample,
    safe_unpickle,
    write_sample,
)

IMG = np.linspace(-2, 2, 3 * 4 * 6, dtype=np.float32).reshape(1, 3, 4, 6)
GT = np.array([[1, 2, 30, 40, 4, 0, 0], [5, 6, 70, 80, 9, 0, 0]], dtype=np.float32)


def dump(path: Path, obj, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


class _Payload:
    """Pickles to a call of ``function(*args)`` on load."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def hostile_payloads(marker: Path) -> dict[str, _Payload]:
    return {
        "os.system": _Payload(os.system, f"touch {marker}"),
        "builtins.open": _Payload(builtins.open, str(marker), "w"),
        "subprocess.call": _Payload(subprocess.call, ["touch", str(marker)]),
        "builtins.exec": _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
    }


@pytest.mark.parametrize("name", ["os.system", "builtins.open", "subprocess.call", "builtins.exec"])
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_hostile_pickle_is_refused_and_does_nothing(tmp_path, name, protocol):
    marker = tmp_path / "pwned"
    payload = hostile_payloads(marker)[name]
    # Hidden behind a valid array, as a tampered download would be.
    path = dump(tmp_path / "val_0.pkl", {"img": IMG, "gt_boxes": GT, "extra": payload}, protocol)
    # Control: a plain pickle.load of this file does create the marker.
    pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UnsafePickleError) as info:
        load_sample(path)
    message = str(info.value)
    assert str(path) in message
    module, function = name.rsplit(".", 1)
    function = {"system": ("system", "posix", "nt")}.get(function, (function,))
    assert "refused global" in message and any(f in message for f in function)
    assert not marker.exists()


def test_hostile_global_opcode_written_by_hand(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "s.pkl"
    path.write_bytes(b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR.")
    with pytest.raises(UnsafePickleError, match=r"refused global os\.system"):
        safe_unpickle(path)
    assert not marker.exists()


def test_persistent_ids_are_refused(tmp_path):
    path = tmp_path / "s.pkl"
    path.write_bytes(b"Pabc\n.")
    with pytest.raises(UnsafePickleError, match="persistent id"):
        safe_unpickle(path)


def test_numpy_functions_outside_the_allow_list_are_refused(tmp_path):
    for module, name in [("numpy", "load"), ("numpy", "frombuffer"), ("numpy.lib.npyio", "load")]:
        path = tmp_path / "s.pkl"
        path.write_bytes(f"c{module}\n{name}\n(tR.".encode())
        with pytest.raises(UnsafePickleError, match=rf"refused global {module}\.{name}"):
            safe_unpickle(path)


def test_alias_name_from_architecture_doc():
    assert SafeUnpickleError is UnsafePickleError
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_arrays_load_under_every_protocol(tmp_path, protocol):
    path = dump(tmp_path / "s.pkl", {"img": IMG, "gt_boxes": GT}, protocol)
    sample = load_sample(path)
    np.testing.assert_array_equal(sample["img"], IMG)
    np.testing.assert_array_equal(sample["gt_boxes"], GT)
    assert sample["img"].dtype == np.float32 and sample["gt_boxes"].dtype == np.float32


def test_numpy1_pickle_loads(tmp_path):
    # numpy 1.x wrote arrays as numpy.core.multiarray._reconstruct; protocol 2 spells globals as text.
    data = pickle.dumps({"img": IMG, "gt_boxes": GT}, protocol=2)
    assert b"numpy._core.multiarray" in data
    path = tmp_path / "old.pkl"
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy.core's shim is never touched
        sample = load_sample(path)
    np.testing.assert_array_equal(sample["img"], IMG)


def test_written_sample_round_trips(tmp_path):
    path = tmp_path / "val_3.pkl"
    write_sample(path, IMG, GT)
    assert path.read_bytes()[:2] == b"\x80\x04"
    assert [p.name for p in tmp_path.iterdir()] == ["val_3.pkl"]
    sample = load_sample(path, image_size=(4, 6))
    np.testing.assert_array_equal(sample["img"], IMG)
    np.testing.assert_array_equal(sample["gt_boxes"], GT)


def test_reference_style_gt_boxes_are_normalised(tmp_path):
    # torch.tensor(list of int rows) is int64; torch.tensor([]) is float32 of shape (0,).
    sample = load_sample(dump(tmp_path / "a.pkl", {"img": IMG, "gt_boxes": GT.astype(np.int64)}))
    assert sample["gt_boxes"].dtype == np.float32
    np.testing.assert_array_equal(sample["gt_boxes"], GT)
    empty = load_sample(dump(tmp_path / "b.pkl", {"img": IMG, "gt_boxes": np.zeros((0,), np.float32)}))
    assert empty["gt_boxes"].shape == (0, 7) and empty["gt_boxes"].dtype == np.float32


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([IMG, GT], r"dict with keys"),
        ({"img": IMG}, r"dict with keys .* found \['img'\]"),
        ({"img": IMG, "gt_boxes": GT, "more": 1}, r"found \['gt_boxes', 'img', 'more'\]"),
        ({"img": IMG.astype(np.float64), "gt_boxes": GT}, r"'img' must be a float32 array .* float64"),
        ({"img": IMG[0], "gt_boxes": GT}, r"'img' must be .* \(3, 4, 6\)"),
        ({"img": np.zeros((2, 3, 4, 6), np.float32), "gt_boxes": GT}, r"'img' must be"),
        ({"img": np.zeros((1, 4, 4, 6), np.float32), "gt_boxes": GT}, r"'img' must be"),
        ({"img": IMG.tolist(), "gt_boxes": GT}, r"'img' must be .* found list"),
        ({"img": IMG, "gt_boxes": GT[:, :6]}, r"'gt_boxes' must be \(N, 7\), found \(2, 6\)"),
        ({"img": IMG, "gt_boxes": GT[0]}, r"'gt_boxes' must be \(N, 7\)"),
        ({"img": IMG, "gt_boxes": GT.astype(bool)}, r"'gt_boxes' must be a numeric array"),
    ],
)
def test_bad_layout_names_the_file(tmp_path, obj, message):
    path = dump(tmp_path / "val_9.pkl", obj)
    with pytest.raises(SampleFormatError, match=message) as info:
        load_sample(path)
    assert str(path) in str(info.value)


def test_wrong_image_size_and_truncated_file(tmp_path):
    path = tmp_path / "val_0.pkl"
    write_sample(path, IMG, GT)
    with pytest.raises(SampleFormatError, match=r"\(4, 6\) pixels, expected \(8, 6\)"):
        load_sample(path, image_size=(8, 6))
    data = path.read_bytes()
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(SampleFormatError, match="not a complete sample pickle") as info:
            load_sample(path)
        assert str(path) in str(info.value)


def test_codecs_encode_is_latin1_only(tmp_path):
    path = tmp_path / "s.pkl"
    path.write_bytes(b"c_codecs\nencode\n(Vabc\nVzlib_codec\ntR.")
    with pytest.raises(UnsafePickleError, match="encoding 'zlib_codec'") as info:
        safe_unpickle(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"c_codecs\nencode\n(Vabc\nVlatin1\ntR.")
    assert safe_unpickle(path) == b"abc"
