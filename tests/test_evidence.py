"""GPU windows on a CPU (ssl_bench/evidence): the budget stop, the bundle's limits, resuming from a bundle in a fresh
copy of the project, the compact data that travels, the queue file."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import PROJECT_ROOT, TINY
from ssl_bench.config import ConfigError
from ssl_bench.data.compact import COMPACT_NOTE, compact_image, copy_note, pack_dataset, unpack_dataset
from ssl_bench.data.manifest import load_manifest
from ssl_bench.data.synthetic import SyntheticSpec, ensure_synthetic
from ssl_bench.evidence import bundle as bundle_module
from ssl_bench.evidence import window
from ssl_bench.evidence.bundle import (MANIFEST, RECORDS, STATE_PREFIX, BundleError, check_bundle, read_manifest,
                                       unpack_bundle, write_bundle)
from ssl_bench.evidence.land import land
from ssl_bench.evidence.queue import QUEUES_DIR, load_queue, read_queue_config

CELL = "synthetic/supervised/frac0.5/draw0"
STEPS = 1000
VALIDATE_EVERY = 100
# The project as a fresh clone holds it: its code, experiments and manifests (no run folders, no records).
PROJECT_PARTS = ("ssl_bench", "experiments", "data_manifests", "pyproject.toml")


def _fresh_copy(target: Path) -> Path:
    for part in PROJECT_PARTS:
        source = PROJECT_ROOT / part
        if source.is_dir():
            shutil.copytree(source, target / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target / part)
    queue = target / "experiments" / "queues" / "resume_test.yaml"
    queue.write_text("stop_grace_s: 20\nmin_start_s: 2\nentries:\n  - {sweep: smoke_queue, only: [method=supervised]}\n")
    return target


def _window(project: Path, out: Path, budget: float, work: str, bundle: Path = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(project), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "ssl_bench.cli", "evidence", "run", "--queue", "resume_test", "--no-check",
               "--budget", str(budget), "--out", str(out), "--work", work, *(["--bundle", str(bundle)] if bundle else []),
               f"trainer.max_steps={STEPS}", f"trainer.val_every_n_steps={VALIDATE_EVERY}"]
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _cell_seconds(out: Path) -> float:
    line = next(ln for ln in (out / "evidence.log").read_text().splitlines() if "finished method=supervised" in ln)
    return float(line.split(" in ")[1].split(" s")[0])


def test_a_cell_stopped_by_the_budget_resumes_from_the_bundle_in_a_fresh_copy_to_the_same_result(tmp_path,
                                                                                              synthetic_cache):
    # Never stopped, in one copy; stopped by the budget in a second; resumed from that bundle in a third, under
    # another work folder (so the run folder moved too).
    whole = _fresh_copy(tmp_path / "whole")
    _window(whole, tmp_path / "whole_out", 600, "runs/window")
    seconds = _cell_seconds(tmp_path / "whole_out")

    # The stop should come between the first validation and the end: about 60% into the cell (the budget keeps the
    # bundle's reserve and the grace). On a machine whose speed changes under load, a stop that missed is tried
    # again with the budget moved towards the middle.
    share, steps = 0.6, []
    for attempt in range(3):
        stopped = _fresh_copy(tmp_path / f"stopped{attempt}")
        out = tmp_path / f"stopped{attempt}_out"
        _window(stopped, out, window.BUNDLE_RESERVE_S + 20 + share * seconds, "runs/window")
        manifest = read_manifest(out)
        finished = CELL in manifest["finished_so_far"]  # else, with nothing carried, it stopped before its first step
        step = manifest["carried"][0]["step"] if manifest["carried"] else STEPS if finished else 0
        steps.append(step)
        if VALIDATE_EVERY < step < STEPS:
            break
        share *= 1.4 if step <= VALIDATE_EVERY else 0.7
    assert VALIDATE_EVERY < step < STEPS, f"the stops came at steps {steps}: never between a validation and the end"
    manifest = read_manifest(out)
    assert [c["cell"] for c in manifest["carried"]] == [CELL], manifest
    state = b"".join(p.read_bytes() for p in sorted(out.glob(f"{STATE_PREFIX}*")))
    (tmp_path / "state.tar").write_bytes(state)
    with tarfile.open(tmp_path / "state.tar") as tar:
        names = [Path(n).name for n in tar.getnames()]
    assert "last.ckpt" in names and "test_scores.json" in names
    assert not [n for n in names if n.startswith(("best-", "test_best-"))]  # scored before the stop instead
    assert check_bundle(out) == []

    resumed = _fresh_copy(tmp_path / "resumed")
    _window(resumed, tmp_path / "resumed_out", 600, "runs/other", bundle=out)
    a, b = whole / "runs/window/runs" / CELL, resumed / "runs/other/runs" / CELL
    assert (a / "per_case.csv").read_bytes() == (b / "per_case.csv").read_bytes()
    ma, mb = json.loads((a / "metrics.json").read_text()), json.loads((b / "metrics.json").read_text())
    assert mb["resumed_from_step"] == step and ma["resumed_from_step"] == 0
    assert ma["results"] == mb["results"] and ma["best_checkpoint"] == mb["best_checkpoint"]
    wa = torch.load(a / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    wb = torch.load(b / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    # The resumed window's bundle holds the record; landing it writes it into a records folder.
    assert read_manifest(tmp_path / "resumed_out")["finished_so_far"] == [CELL]
    landed = land(tmp_path / "resumed_out", tmp_path / "records", tmp_path / "checks")
    assert (tmp_path / "records" / CELL / "metrics.json").is_file() and landed
    # The state estimate that gates a cell is an upper bound of the checkpoint it writes.
    actual = (a / "checkpoints/last.ckpt").stat().st_size
    cell = load_queue(whole / "experiments/queues/resume_test.yaml", [*TINY, f"data.cache_dir={synthetic_cache}"],
                      []).cells[0]
    assert actual <= window.estimated_state_bytes(cell.config()) <= actual + 2 * bundle_module.MiB


def _run_folder(runs: Path, relative: str, checkpoint_bytes: int) -> None:
    folder = runs / relative
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(np.random.default_rng(0).bytes(checkpoint_bytes))
    (folder / "config.yaml").write_text("a: 1\n")
    (folder / ".lock").write_text("")


@pytest.fixture
def small_limits(monkeypatch):
    """The way back's limits scaled down 16-fold, so that the tests move little data."""
    monkeypatch.setattr(bundle_module, "MAX_FILE_BYTES", bundle_module.MiB)
    monkeypatch.setattr(bundle_module, "MAX_TOTAL_BYTES", 4 * bundle_module.MiB)
    monkeypatch.setattr(bundle_module, "SMALL_FILES_BYTES", 128 * 1024)


def test_the_state_is_cut_into_parts_within_the_limits_and_unpacks_byte_for_byte(tmp_path, small_limits):
    runs, records = tmp_path / "runs", tmp_path / "records"
    _run_folder(runs, "d/m/frac0.1/draw0", int(2.5 * bundle_module.MiB))
    (records / "d/m/frac0.1/draw1").mkdir(parents=True)
    (records / "d/m/frac0.1/draw1/metrics.json").write_text("{}")
    manifest = write_bundle(tmp_path / "out", records, runs, [("d/m/frac0.1/draw0", 40)], {"queue": "q"})
    parts = sorted((tmp_path / "out").glob(f"{STATE_PREFIX}*"))
    assert len(parts) == 3 and all(p.stat().st_size <= bundle_module.MiB for p in parts)
    assert manifest["carried"][0]["step"] == 40 and check_bundle(tmp_path / "out") == []
    unpack_bundle(tmp_path / "out", tmp_path / "records2", tmp_path / "runs2")
    for name in ("checkpoints/last.ckpt", "config.yaml"):
        assert (tmp_path / "runs2/d/m/frac0.1/draw0" / name).read_bytes() == (runs / "d/m/frac0.1/draw0" / name).read_bytes()
    assert not (tmp_path / "runs2/d/m/frac0.1/draw0/.lock").exists()
    assert (tmp_path / "records2/d/m/frac0.1/draw1/metrics.json").is_file()


def test_a_state_that_does_not_fit_beside_the_others_is_dropped_and_said_so(tmp_path, small_limits):
    runs = tmp_path / "runs"
    for draw in (0, 1):
        _run_folder(runs, f"d/m/frac0.1/draw{draw}", int(2 * bundle_module.MiB))
    manifest = write_bundle(tmp_path / "out", tmp_path / "none", runs,
                            [("d/m/frac0.1/draw0", 5), ("d/m/frac0.1/draw1", 7)], {})
    assert [c["cell"] for c in manifest["carried"]] == ["d/m/frac0.1/draw0"]  # queue order first
    assert manifest["dropped"][0]["cell"] == "d/m/frac0.1/draw1" and "does not fit" in manifest["dropped"][0]["why"]


def test_a_bundle_beyond_the_limits_or_changed_is_refused(tmp_path, small_limits):
    out = tmp_path / "out"
    out.mkdir()
    for k in range(9):
        (out / f"f{k}").write_bytes(b"x")
    (out / "big").write_bytes(b"x" * (bundle_module.MiB + 1))
    problems = check_bundle(out)
    assert any("10 files" in p for p in problems) and any("big" in p for p in problems)

    write_bundle(tmp_path / "b", tmp_path / "none", tmp_path / "runs", [], {})
    (tmp_path / "b" / RECORDS).write_bytes(b"cut")
    with pytest.raises(BundleError, match="sha256"):
        read_manifest(tmp_path / "b")
    (tmp_path / "b" / MANIFEST).write_text("{")
    with pytest.raises(BundleError, match="not a bundle"):
        read_manifest(tmp_path / "b")


def test_a_cell_whose_state_could_never_travel_fails_the_window_at_once(tmp_path, monkeypatch, synthetic_cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(window, "state_capacity", lambda records_bytes: 1024)
    with pytest.raises(ConfigError, match="resumable state is about .* more than a bundle carries"):
        window.main(["--queue", "smoke", "--no-check", "--out", "out", "--budget", "60", f"data.cache_dir={synthetic_cache}"])
    assert not list((tmp_path / "runs").rglob("last.ckpt"))  # nothing ran


def test_the_queue_runs_a_cell_once_skips_recorded_ones_and_entries_without_data(tmp_path, monkeypatch, synthetic_cache):
    monkeypatch.setenv("SSL_BENCH_DATA_ROOT", str(tmp_path / "empty"))
    queue = tmp_path / "q.yaml"
    queue.write_text("entries:\n  - {sweep: smoke_queue, only: [method=supervised]}\n  - {sweep: smoke_queue}\n"
                     "  - {sweep: acdc}\n")
    overrides = [f"data.cache_dir={synthetic_cache}", "logging.wandb=false"]
    loaded = load_queue(queue, overrides, [])
    assert [c.method for c in loaded.cells] == ["supervised", "mean_teacher"]
    assert len(loaded.skipped) == 1 and loaded.skipped[0].startswith("acdc")


def test_compact_data_keeps_integer_images_and_labels_exact_and_rounds_float_images_to_float16(tmp_path):
    manifest_path = ensure_synthetic(tmp_path / "cache", spec=SyntheticSpec(n_cases=3, shape=(16, 16, 16), n_organs=2))
    manifest, root = load_manifest(manifest_path), manifest_path.parent
    case = manifest.cases[0]
    image_path = root / manifest.directory / case.image
    original = nib.load(str(image_path))
    floats = np.asarray(original.dataobj, dtype=np.float32) * np.float32(0.37) + np.float32(0.001)
    nib.save(nib.Nifti1Image(floats, original.affine, original.header), str(image_path))
    integers = manifest.cases[1]
    integer_path = root / manifest.directory / integers.image
    whole = np.round(np.asarray(nib.load(str(integer_path)).dataobj) * 300).astype(np.float32)
    nib.save(nib.Nifti1Image(whole, nib.load(str(integer_path)).affine), str(integer_path))

    packed = pack_dataset(manifest, root, tmp_path / "set.npz.xz")
    assert "image float16" in packed["stored_as"] and "label uint8" in packed["stored_as"]
    folder = unpack_dataset(tmp_path / "set.npz.xz", manifest, tmp_path / "copy")
    back = nib.load(str(folder / case.image))
    values = np.asarray(back.dataobj)
    assert values.dtype == np.float32 and np.allclose(values, floats, rtol=2.0 ** -11, atol=0)
    assert np.array_equal(np.asarray(nib.load(str(folder / integers.image)).dataobj), whole)
    assert back.header.get_zooms() == original.header.get_zooms() and np.array_equal(back.affine, original.affine)
    for c in manifest.cases:
        assert np.array_equal(np.asarray(nib.load(str(folder / c.label)).dataobj),
                              np.asarray(nib.load(str(root / manifest.directory / c.label)).dataobj))
    assert copy_note(folder)["images_rounded_to_float16"] == len(manifest.cases) - 1 and (folder / COMPACT_NOTE).is_file()


def test_an_image_beyond_float16s_range_is_kept_as_float32():
    values = np.array([0.5, 70000.25, 3.0], dtype=np.float32)
    assert compact_image(values).dtype == np.float32 and np.array_equal(compact_image(values), values)
    assert compact_image(np.array([0.5, 1000.25], dtype=np.float32)).dtype == np.float16
    assert compact_image(np.array([-3.0, 300.0], dtype=np.float32)).dtype == np.int16  # integers: exact


def test_cells_share_a_state_estimate_only_where_their_networks_can_be_alike(tmp_path, synthetic_cache):
    queue = tmp_path / "q.yaml"
    queue.write_text("entries:\n  - {sweep: smoke_queue}\n")
    overrides = [f"data.cache_dir={synthetic_cache}", "logging.wandb=false"]
    supervised, teacher = load_queue(queue, overrides, []).cells
    wider = load_queue(queue, [*overrides, "model.channels=[8,16,32]"], []).cells[0]
    draw1 = replace(supervised, draw=1, overrides=(*supervised.overrides, "data.draw=1", "trainer.seed=3"))
    assert len({window.state_key(c) for c in (supervised, teacher, wider)}) == 3  # method and network matter
    assert window.state_key(draw1) == window.state_key(supervised)  # the labeled cases and the seed do not


def test_the_default_queue_starts_with_the_left_atrium_cpu_cells_a_cpu_cannot_finish():
    """ua_mt and unimatch cells of the la sweep take 2.5-4 hours each on one CPU thread (README, "Cost on this
    machine"), longer than a CPU sitting: the GPU windows run them first, draw by draw, before la_gpu."""
    entries = read_queue_config(QUEUES_DIR / "default.yaml").entries
    assert [(e.sweep, e.only) for e in entries[:3]] == [
        ("la", ["method=ua_mt", "method=unimatch", "draw=0"]), ("la", ["method=ua_mt", "method=unimatch", "draw=1"]),
        ("la_gpu", ["draw=0"])]
    for entry in entries:  # every entry names a shipped sweep
        assert (PROJECT_ROOT / "experiments" / "sweeps" / f"{entry.sweep}.yaml").is_file()
