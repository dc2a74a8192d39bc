"""Where a result was computed, read from a run's metrics.json ``provenance`` entry.

train() records the commit, device and library versions of every run (ssl_bench.run.provenance_entry). Runs made before
that have no entry: their fields read "unknown", except what the run's own files show (the precision is in its
config.yaml). The reader is lenient about the entry's shape (a field may be missing, nested under ``git`` or
named with a ``_version`` suffix) because records outlive the code that wrote them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

UNKNOWN = "unknown"
# Field -> the keys it may have in metrics.json's provenance entry, most likely first ("a.b": nested).
_ALIASES: Dict[str, Tuple[str, ...]] = {
    "commit": ("git_commit", "commit", "git.commit"),
    "dirty": ("git_dirty", "dirty", "git.dirty"),
    "device": ("device", "device_name", "gpu", "cpu"),
    "torch": ("torch", "torch_version", "versions.torch"),
    "cuda": ("cuda", "cuda_version", "versions.cuda"),
    "cudnn": ("cudnn", "cudnn_version", "versions.cudnn"),
    "monai": ("monai", "monai_version", "versions.monai"),
    "lightning": ("lightning", "lightning_version", "versions.lightning"),
    "precision": ("precision",),
    "threads": ("threads", "torch_threads", "num_threads"),
}


@dataclass(frozen=True)
class Provenance:
    """One run's provenance; a field is None when neither the entry nor the run's files say it."""
    commit: Optional[str] = None
    dirty: Optional[bool] = None
    device: Optional[str] = None
    torch: Optional[str] = None
    cuda: Optional[str] = None
    cudnn: Optional[str] = None
    monai: Optional[str] = None
    lightning: Optional[str] = None
    precision: Optional[str] = None
    threads: Optional[int] = None
    recorded: bool = False  # whether metrics.json has a provenance entry at all
    inferred: Tuple[str, ...] = field(default=())  # fields taken from the run's config, not from the entry

    @property
    def hardware(self) -> str:
        """The device a run was computed on, e.g. "NVIDIA H200", or "unknown": the label that tells apart
        replicates of one cell and marks comparisons across machines."""
        return self.device or UNKNOWN

    def describe(self) -> str:
        """A one-line environment, e.g. "NVIDIA H200, commit 8eee470, torch 2.11.0+cu130 (CUDA 13.0), ..."."""
        if not self.recorded:
            return UNKNOWN + " (run made before provenance was recorded)"
        commit = (self.commit or UNKNOWN) + (" (dirty)" if self.dirty else "")
        parts = [self.hardware, f"commit {commit}"]
        if self.torch:
            parts.append(f"torch {self.torch}" + (f" (CUDA {self.cuda}" + (f", cuDNN {self.cudnn}" if self.cudnn else "")
                                                  + ")" if self.cuda else ""))
        parts += [f"{name} {value}" for name, value in (("MONAI", self.monai), ("Lightning", self.lightning)) if value]
        if self.precision:
            parts.append(f"precision {self.precision}")
        if self.threads:
            parts.append(f"{self.threads} threads")
        return ", ".join(parts)


def read_provenance(metrics: dict, config: Optional[dict] = None) -> Provenance:
    """The provenance of a run from its metrics.json (and flat config, for what a run's config shows)."""
    entry = metrics.get("provenance")
    values: Dict[str, Any] = {}
    if isinstance(entry, dict):
        for name, keys in _ALIASES.items():
            values[name] = next((v for v in (_lookup(entry, k) for k in keys) if v not in (None, "")), None)
    if isinstance(values.get("device"), dict):  # e.g. {"name": ..., "memory": ...}
        values["device"] = values["device"].get("name")
    inferred = []
    if values.get("precision") is None and config and config.get("trainer.precision") is not None:
        values["precision"] = str(config["trainer.precision"])
        inferred.append("precision")
    return Provenance(
        commit=_text(values.get("commit")), dirty=_flag(values.get("dirty")), device=_text(values.get("device")),
        torch=_text(values.get("torch")), cuda=_text(values.get("cuda")), cudnn=_text(values.get("cudnn")),
        monai=_text(values.get("monai")), lightning=_text(values.get("lightning")),
        precision=_text(values.get("precision")), threads=_integer(values.get("threads")),
        recorded=isinstance(entry, dict), inferred=tuple(inferred))


def hardware_slug(hardware: str) -> str:
    """A folder-name form of a hardware label: "NVIDIA H200" -> "nvidia-h200"."""
    return re.sub(r"[^a-z0-9]+", "-", hardware.lower()).strip("-") or UNKNOWN


def _lookup(entry: dict, dotted: str) -> Any:
    value: Any = entry
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _text(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _flag(value: Any) -> Optional[bool]:
    return value if isinstance(value, bool) else None


def _integer(value: Any) -> Optional[int]:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None
