"""A window's bundle: what comes back from a GPU window, within the way back's limits, and what the next one resumes.

A bundle folder holds at most MAX_FILES files of at most MAX_FILE_BYTES each, MAX_TOTAL_BYTES together:

- ``bundle.json``: the window (queue, commit, device, budget), its cells (finished, carried unfinished with their
  step, dropped, failed) and the sha256 of every other file;
- ``records.tar.gz``: the records of every cell finished so far, in this window or an earlier one (the layout of
  results/records; ``ssl-bench evidence land`` copies them there);
- ``state.tar.000``, ``.001``, ...: the run folders of the unfinished cells, one tar cut into parts: ``last.ckpt``
  (the whole training state at the step the window stopped them), the run's small files, and a selected checkpoint
  only if its test scores were not kept (ssl_bench/run/stop_scores.py). Unfinished cells are carried in queue order while
  they fit; one that does not is dropped (it starts over in a later window) and said so;
- ``evidence.log`` and ``gpu-check.md``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple

from ssl_bench.run.callbacks import CHECKPOINTS
from ssl_bench.records import METRICS_FILE
from ssl_bench.run.stop_scores import read_scores
from ssl_bench.utils.errors import ExplainedError
from ssl_bench.utils.io import atomic_write_json

MiB = 2**20
# The way back from a lent machine: at most 8 files of at most 16 MiB, 64 MiB together.
MAX_FILES = 8
MAX_FILE_BYTES = 16 * MiB
MAX_TOTAL_BYTES = 64 * MiB
MANIFEST = "bundle.json"
RECORDS = "records.tar.gz"
STATE_PREFIX = "state.tar."
LOG = "evidence.log"
CHECK_TABLE = "gpu-check.md"
# Room kept for bundle.json, the log and the check's table, which are written as the window ends.
SMALL_FILES_BYTES = 2 * MiB
# What a carried run folder leaves out: its lock, offline W&B files and predictions (none is needed to resume).
LEFT_OUT = (".lock", "wandb", "predictions")
FORMAT = 1


class BundleError(ExplainedError, ValueError):
    """A bundle that breaks the limits or cannot be read; the message names the file."""


@dataclass
class CarriedRun:
    relative_dir: str
    step: int
    bytes: int


def state_capacity(records_bytes: int) -> int:
    """Bytes the unfinished cells' state may take beside the records and the small files."""
    parts = MAX_FILES - 3 - 1  # bundle.json, the log, the check's table; the records
    return max(0, min(parts * MAX_FILE_BYTES, MAX_TOTAL_BYTES - records_bytes - SMALL_FILES_BYTES))


def run_files(run: Path) -> List[Path]:
    """The files of a run folder a resumed run needs, as a bundle carries them."""
    kept_scores = set(read_scores(run / CHECKPOINTS)) if (run / CHECKPOINTS).is_dir() else set()
    files = []
    for path in sorted(run.rglob("*")):
        relative = path.relative_to(run)
        if not path.is_file() or relative.parts[0] in LEFT_OUT or path.name.endswith(".tmp"):
            continue
        if relative.parts[0] == CHECKPOINTS and path.name in kept_scores:
            continue  # scored before the stop: the resumed run uses the kept rows
        files.append(path)
    return files


def _tar_bytes(root: Path, files: Iterable[Path], compress: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if compress else "w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""  # the same bytes every time
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(out: Path, records_dir: Path, runs_dir: Path, unfinished: Sequence[Tuple[str, int]],
                 info: dict) -> dict:
    """Writes the bundle into ``out`` (records of ``records_dir``, state of the ``unfinished`` run folders under
    ``runs_dir`` as (relative folder, step) in priority order) except the log and the check's table, which the
    caller writes before check_bundle. Returns bundle.json's content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{STATE_PREFIX}*"):
        old.unlink()
    records = sorted(p for p in Path(records_dir).rglob("*") if p.is_file()) if Path(records_dir).is_dir() else []
    (out / RECORDS).write_bytes(_tar_bytes(Path(records_dir), records, compress=True))
    capacity = state_capacity((out / RECORDS).stat().st_size)
    carried: List[CarriedRun] = []
    dropped: List[dict] = []
    files: List[Path] = []
    used = 0
    for relative, step in unfinished:
        mine = run_files(Path(runs_dir) / relative)
        size = sum(p.stat().st_size for p in mine) + 1024 * (len(mine) + 1)  # tar headers
        if used + size <= capacity:
            carried.append(CarriedRun(relative, step, size))
            files += mine
            used += size
        else:
            dropped.append({"cell": relative, "step": step, "bytes": size,
                            "why": f"its state ({size / MiB:.1f} MiB) does not fit beside the others "
                                   f"({used / MiB:.1f} of {capacity / MiB:.1f} MiB used)"})
    if files:
        state = _tar_bytes(Path(runs_dir), files, compress=False)
        for k in range(0, len(state), MAX_FILE_BYTES):
            (out / f"{STATE_PREFIX}{k // MAX_FILE_BYTES:03d}").write_bytes(state[k:k + MAX_FILE_BYTES])
    manifest = {"format": FORMAT, **info,
                "carried": [{"cell": c.relative_dir, "step": c.step, "bytes": c.bytes} for c in carried],
                "dropped": dropped,
                "files": {p.name: _sha256(p) for p in sorted(out.iterdir())
                          if p.name == RECORDS or p.name.startswith(STATE_PREFIX)}}
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def check_bundle(out: Path) -> List[str]:
    """The bundle's breaches of the way back's limits (none: an empty list)."""
    files = [p for p in Path(out).rglob("*") if p.is_file()]
    problems = []
    if len(files) > MAX_FILES:
        problems.append(f"{out}: {len(files)} files, more than {MAX_FILES} ({', '.join(p.name for p in files)})")
    for path in files:
        if path.stat().st_size > MAX_FILE_BYTES:
            problems.append(f"{path}: {path.stat().st_size / MiB:.1f} MiB, more than {MAX_FILE_BYTES // MiB} MiB")
        if path.parent != Path(out):
            problems.append(f"{path}: in a subfolder; a bundle is one flat folder")
    total = sum(p.stat().st_size for p in files)
    if total > MAX_TOTAL_BYTES:
        problems.append(f"{out}: {total / MiB:.1f} MiB in all, more than {MAX_TOTAL_BYTES // MiB} MiB")
    return problems


def read_manifest(bundle: Path) -> dict:
    path = Path(bundle) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BundleError(f"{path}: not a bundle's manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "files" not in manifest:
        raise BundleError(f"{path}: not a bundle of format {FORMAT}")
    for name, digest in manifest["files"].items():
        if not (Path(bundle) / name).is_file():
            raise BundleError(f"{Path(bundle) / name}: listed in {path} but missing")
        if _sha256(Path(bundle) / name) != digest:
            raise BundleError(f"{Path(bundle) / name}: its sha256 differs from {path}'s (cut short or changed)")
    return manifest


def _extract(data: bytes, target: Path, source: str) -> List[str]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            names = tar.getnames()
            tar.extractall(target, filter="data")  # no absolute paths, links or paths out of target
    except (tarfile.TarError, OSError) as err:
        raise BundleError(f"{source}: cannot be unpacked ({err})") from None
    return names


def unpack_bundle(bundle: Path, records_dir: Path, runs_dir: Path) -> dict:
    """Unpacks a bundle (an earlier window's OUT): its records into ``records_dir``, the carried run folders into
    ``runs_dir``, replacing an unfinished folder of the same cell there. Returns its manifest."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    _extract((bundle / RECORDS).read_bytes(), Path(records_dir), str(bundle / RECORDS))
    parts = sorted(bundle.glob(f"{STATE_PREFIX}*"))
    if parts:
        for carried in manifest["carried"]:
            folder = Path(runs_dir) / carried["cell"]
            if folder.is_dir() and not (folder / METRICS_FILE).is_file():
                shutil.rmtree(folder)
        _extract(b"".join(p.read_bytes() for p in parts), Path(runs_dir), f"{bundle}/{STATE_PREFIX}*")
    return manifest
