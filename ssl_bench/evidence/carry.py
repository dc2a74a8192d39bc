"""``make gpu-carry``: what travels to a bare GPU machine, in one ignored folder (default .carry/), checked to fit.

A lent machine has torch, lightning, torchmetrics, scipy, h5py and PyYAML, reaches no package registry and no data,
and takes at most 64 MiB of files with each command (the project's working tree included). The folder holds:

- ``wheels/``: the packages the project needs beyond those (CARRIED_PACKAGES), at the versions installed here;
- ``data/<name>.npz.xz``: each queued dataset's cases in the compact form of ssl_bench/data/compact.py (images
  exact where their values are integers, else rounded to float16), unpacked on the machine by `evidence run --carry`;
- ``source.json``: the commit the project was carried at (the machine receives no git history).

The check: the project's files (tracked and untracked, not ignored) and the folder together stay within
``--limit-mib`` (60 MiB, leaving room under the 64 MiB a command takes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, List

from ssl_bench.config import PROJECT_ROOT
from ssl_bench.data.compact import COMPACT_SUFFIX, pack_dataset
from ssl_bench.data.dataset import resolve_dataset
from ssl_bench.evidence.bundle import MiB
from ssl_bench.evidence.queue import load_queue, queue_path
from ssl_bench.run.provenance_entry import git_state
from ssl_bench.utils.io import atomic_write_json

# What the project imports beyond a lent machine's packages (its pip list: /work/.library/device/KINDS.md).
CARRIED_PACKAGES = ("monai", "nibabel", "omegaconf", "submitit")
DEFAULT_CARRY = Path(".carry")
DEFAULT_LIMIT_MIB = 60
SOURCE_FILE = "source.json"
def download_wheels(folder: Path) -> List[Path]:
    """The wheels of CARRIED_PACKAGES at the versions installed here (all pure Python), from the package index."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in CARRIED_PACKAGES:
        version = metadata.version(name)
        if not list(folder.glob(f"{name.replace('-', '_')}-{version}-*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--only-binary=:all:",
                            "-w", str(folder), f"{name}=={version}"], check=True)
    return sorted(folder.glob("*.whl"))


def project_bytes(root: Path = PROJECT_ROOT) -> int:
    """The bytes of the files that travel as the working tree: tracked, and untracked but not ignored."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "-co", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((root / name.decode()).stat().st_size for name in listed if name and (root / name.decode()).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def datasets_of_queue(queue_file: Path) -> Dict[str, tuple]:
    """{dataset name: (manifest, data root)} of the queue's cells that read files (generated data travels as code)."""
    queue = load_queue(queue_file, ["logging.wandb=false"], [])
    found = {}
    for cell in queue.cells:
        cfg = cell.config()
        if cfg.data.manifest and cfg.data.name not in found:
            found[cfg.data.name] = resolve_dataset(cfg)
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ssl-bench evidence carry", description=__doc__.splitlines()[0])
    parser.add_argument("--queue", default="default")
    parser.add_argument("--out", default=str(DEFAULT_CARRY))
    parser.add_argument("--limit-mib", type=float, default=DEFAULT_LIMIT_MIB)
    parser.add_argument("--no-wheels", action="store_true", help="leave the wheels out (a machine that has them)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    wheels = [] if args.no_wheels else download_wheels(out / "wheels")
    for wheel in wheels:
        print(f"wheel {wheel.name}: {wheel.stat().st_size / MiB:.1f} MiB")
    for name, (manifest, root) in datasets_of_queue(queue_path(args.queue)).items():
        target = out / "data" / f"{name}{COMPACT_SUFFIX}"
        if not target.is_file():
            print(f"{name}: packing {len(manifest.cases)} cases from {root / manifest.directory} ...", flush=True)
            packed = pack_dataset(manifest, root, target)
            print(f"{name}: {packed['bytes'] / MiB:.1f} MiB ({', '.join(packed['stored_as'])})")
    commit, dirty = git_state()
    atomic_write_json(out / SOURCE_FILE, {"git_commit": commit, "git_dirty": dirty})
    project, carried = project_bytes(), folder_bytes(out)
    total = (project + carried) / MiB
    print(f"travels: project {project / MiB:.1f} MiB + {out} {carried / MiB:.1f} MiB = {total:.1f} MiB "
          f"(limit {args.limit_mib:.0f} MiB)")
    if total > args.limit_mib:
        print(f"ssl-bench evidence carry: {total:.1f} MiB is more than {args.limit_mib:.0f} MiB: queue fewer "
              "datasets or leave the wheels out", file=sys.stderr)
        return 2
    return 0
