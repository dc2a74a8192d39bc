"""``make gpu-land BUNDLE=<folder>``: a window's bundle into the committed results: each record into results/records
(beside a record of the same cell from other hardware, as ``draw<d>@<hardware>``: ssl_bench/records), and its
gpu-check table into results/gpu-checks/<device>-<date>.md."""

from __future__ import annotations

import argparse
import tarfile
import tempfile
import time
from pathlib import Path

from ssl_bench.evidence.bundle import CHECK_TABLE, RECORDS, read_manifest
from ssl_bench.run.identity import METRICS_FILE
from ssl_bench.records import keep_record
from ssl_bench.records.provenance import hardware_slug

DEFAULT_CHECKS = Path("results") / "gpu-checks"


def land(bundle: Path, records_dir: Path, checks_dir: Path) -> list:
    """The record folders written from ``bundle``."""
    manifest = read_manifest(bundle)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(bundle / RECORDS) as tar:
            tar.extractall(tmp, filter="data")
        for metrics in sorted(Path(tmp).rglob(METRICS_FILE)):
            relative = metrics.parent.relative_to(tmp)
            written.append(keep_record(metrics.parent, records_dir / relative))
    if (bundle / CHECK_TABLE).is_file():
        checks_dir.mkdir(parents=True, exist_ok=True)
        day = time.strftime("%Y-%m-%d", time.gmtime((bundle / CHECK_TABLE).stat().st_mtime))
        target = checks_dir / f"{hardware_slug(manifest.get('device', 'unknown'))}-{day}.md"
        target.write_text((bundle / CHECK_TABLE).read_text())
        written.append(target)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ssl-bench evidence land", description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--records", default="results/records")
    parser.add_argument("--checks", default=str(DEFAULT_CHECKS))
    args = parser.parse_args(argv)
    for path in land(Path(args.bundle), Path(args.records), Path(args.checks)):
        print(f"landed {path}")
    return 0
