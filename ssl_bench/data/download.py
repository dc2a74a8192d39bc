"""Fetch a public Medical Segmentation Decathlon task with MONAI's downloader (hash-checked)."""

from __future__ import annotations

from pathlib import Path

from ssl_bench.data.manifest import DATA_ROOT_ENV
from ssl_bench.utils.errors import ExplainedError

# ssl-bench dataset name -> MSD task folder; URLs and MD5s come from MONAI's DecathlonDataset.
MSD_TASKS = {"hippocampus": "Task04_Hippocampus"}


class DownloadError(ExplainedError, RuntimeError):
    pass


def download_msd(dataset: str, root: Path) -> Path:
    """Download and extract ``dataset`` into ``root/<Task>``; returns that folder."""
    # Here: monai.apps takes seconds to import, and every ssl-bench command imports this module for DownloadError.
    from monai.apps import DecathlonDataset, download_and_extract
    if dataset not in MSD_TASKS:
        raise DownloadError(f"unknown dataset '{dataset}' (known: {', '.join(sorted(MSD_TASKS))})")
    task = MSD_TASKS[dataset]
    target = Path(root) / task
    if (target / "dataset.json").is_file():
        print(f"{target} already exists; nothing to download")
        return target
    Path(root).mkdir(parents=True, exist_ok=True)
    archive = Path(root) / f"{task}.tar"
    try:
        download_and_extract(DecathlonDataset.resource[task], filepath=str(archive), output_dir=str(root),
                             hash_val=DecathlonDataset.md5[task], hash_type="md5")
    except Exception as err:  # network errors come in many types (URLError, HTTPError, timeouts, ...)
        raise DownloadError(
            f"could not download {task} ({type(err).__name__}: {err}). If you already have a copy, point "
            f"ssl-bench at the folder that holds {task}/: export {DATA_ROOT_ENV}=/path/to/that/folder "
            f"(or pass data.root=...), then check it with `ssl-bench data verify`.") from None
    archive.unlink(missing_ok=True)
    print(f"downloaded {task} into {target}; set {DATA_ROOT_ENV}={Path(root).resolve()}")
    return target
