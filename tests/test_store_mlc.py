"""``--store=mmap`` through the real ``mlcr``: the dataset script leaves a store in its cache entry,
cached apart from the pickle entry, and run-abtf-inference passes it to the LoadGen QSL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import finished_cache_entries
from test_mlc_scripts import TINY_RAW, exported, mlcr, registered_mlc_home

from abtf_ssd import cli
from abtf_ssd.data.store import STORE_MANIFEST, SampleStore
from abtf_ssd.data.store_writer import convert_pickles_to_store
from abtf_ssd.loadgen.accuracy import ACCURACY_LOG, ACCURACY_TXT
from abtf_ssd.loadgen.harness import COMMAND_TXT, RESULTS_JSON

DATASET = "get,preprocessed,dataset,cognata,_synthetic,_2d_obj_det,_validation"
DATASET_LABEL = "Preprocessed Cognata dataset"
STORE_DATA = ("images.f32", "gt_boxes.npy", "gt_offsets.npy")
CACHED_STATE = "mlc-cached-state.json"


@pytest.fixture(scope="module")
def mlc_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    return registered_mlc_home(tmp_path_factory, "mlc_store_home")


def _dataset(env: dict[str, str], home: Path, *args: str) -> tuple[Path, str]:
    output = mlcr(env, home, DATASET, *TINY_RAW[:2], *args)
    return Path(exported(output, DATASET_LABEL)), output


def test_store_entry_is_cached_apart_from_the_pickle_entry(
    mlc_home: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, home = mlc_home
    pickles, _ = _dataset(env, home)
    store_dir, _ = _dataset(env, home, "--store=mmap")

    assert sorted(p.name for p in pickles.glob("*.pkl")) == ["val_0.pkl", "val_1.pkl", "val_2.pkl"]
    assert store_dir.name == "mmap" and store_dir.parent != pickles
    assert not list(store_dir.parent.glob("*.pkl")), "preprocessed straight into the store"
    state = json.loads((store_dir.parent / CACHED_STATE).read_text())["new_env"]
    assert state["MLC_ABTF_DATASET_STORE_PATH"] == state["MLC_ABTF_DATASET_PATH"] == str(store_dir)
    assert state["MLC_ABTF_DATASET_STORE"] == "mmap" and state["MLC_ABTF_DATASET_PREFIX"] == "val"
    converted = convert_pickles_to_store(pickles, tmp_path / "converted", progress=False)
    for name in STORE_DATA:
        assert (store_dir / name).read_bytes() == (converted / name).read_bytes(), name
    assert len(SampleStore.open(store_dir)) == 3

    # Each request finds its own entry again, never the other kind.
    again, output = _dataset(env, home)
    assert again == pickles and CACHED_STATE in output
    again, output = _dataset(env, home, "--store=mmap")
    assert again == store_dir and CACHED_STATE in output
    assert len(finished_cache_entries(env, home, "get,preprocessed,dataset,cognata,_synthetic")) == 2


def test_run_abtf_inference_store_mmap_matches_the_pickle_run(
    mlc_home: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, home = mlc_home
    results = tmp_path / "results"
    output = mlcr(
        env,
        home,
        "run-abtf-inference,reference,_v0.5,_synthetic,_accuracy-only",
        "--model=ssd",
        "--device=cpu",
        "--framework=onnxruntime",
        "--scenario=SingleStream",
        "--execution_mode=test",
        *TINY_RAW[:2],
        "--test_query_count=3",
        "--threads=2",
        f"--results_dir={results}",
        "--store=mmap",
    )
    run_dir = results / "default" / "ssd" / "SingleStream" / "accuracy"
    assert f"Results folder: {run_dir.parent}" in output
    recorded = json.loads((run_dir / RESULTS_JSON).read_text())
    store_dir = Path(recorded["dataset_dir"])
    assert store_dir.name == "mmap" and (store_dir / STORE_MANIFEST).is_file(), "the QSL mapped a store"
    assert "--store mmap" in (run_dir / COMMAND_TXT).read_text()

    # The same model on the same frames as pickles: the same detections and mAP.
    pickles, _ = _dataset(env, home)
    args = [
        "run", "--dataset-dir", str(pickles), "--model-path", recorded["options"]["model_path"],
        "--config-name", "demo", "--mode", "accuracy", "--test-query-count", "3", "--threads", "2",
        "--results-dir", str(tmp_path / "pickle_results"),
    ]  # fmt: skip
    assert cli.main(args) == 0
    pickle_dir = tmp_path / "pickle_results" / "default" / "ssd" / "SingleStream" / "accuracy"
    assert (run_dir / ACCURACY_LOG).read_bytes() == (pickle_dir / ACCURACY_LOG).read_bytes()
    mlc_map = (run_dir / ACCURACY_TXT).read_text().splitlines()[0]
    assert mlc_map == (pickle_dir / ACCURACY_TXT).read_text().splitlines()[0]


def test_unknown_store_fails_before_any_download(mlc_home: tuple[dict[str, str], Path]) -> None:
    env, home = mlc_home
    before = finished_cache_entries(env, home, "get")
    output = mlcr(
        env, home, "run-abtf-inference,reference,_v0.5,_full", "--device=cpu", "--store=tmpfs", ok=False
    )
    assert "--store=tmpfs: unknown sample store; use pickle or mmap" in output
    output = mlcr(env, home, DATASET, *TINY_RAW[:2], "--store=tmpfs", ok=False)
    assert "get-preprocessed-dataset-cognata: --store=tmpfs: unknown sample store" in output
    assert finished_cache_entries(env, home, "get") == before


def test_download_dry_run_with_store_mmap(mlc_home: tuple[dict[str, str], Path]) -> None:
    env, home = mlc_home
    out = home / "dry_store"
    output = mlcr(
        env,
        home,
        "get,preprocessed,dataset,cognata,_mlc,_2d_obj_det,_validation,_dry-run",
        f"--outdirname={out}",
        "--store=mmap",
    )
    assert "val_2d.tar.gz" in output and "abtf-ssd convert-store <the val_<i>.pkl folder" in output
    assert not [p for p in out.rglob("*") if not p.name.startswith("tmp-")], "a dry run wrote files"
