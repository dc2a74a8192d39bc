"""Where a run's dataset is: its manifest and the data root that holds it, or the generated data of a dataset without
a manifest (synthetic, synthetic_multiorgan), made into the cache if missing. What a training run, a pretraining
stage, ``data verify`` and the tests all resolve the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

from omegaconf import DictConfig

from ssl_bench.config import ConfigError, data_root, resolve_project_path
from ssl_bench.data.manifest import DATA_ROOT_ENV, Manifest, load_manifest
from ssl_bench.data.synthetic import SyntheticSpec, ensure_synthetic


def resolve_dataset(cfg: DictConfig) -> Tuple[Manifest, Path]:
    """The manifest and data root of ``cfg.data``; synthetic data (any dataset without a manifest, e.g.
    synthetic or synthetic_multiorgan) is generated into the cache if missing."""
    if not cfg.data.manifest:
        if cfg.data.root:  # $SSL_BENCH_DATA_ROOT, which make always sets, is another matter: no error
            raise ConfigError(
                f"data.root={cfg.data.root}: '{cfg.data.name}' is generated (it has no data.manifest) into "
                f"data.cache_dir ({cfg.data.cache_dir}), not read from a data root; drop data.root (or set "
                "data.cache_dir), or give data.manifest to read a copy from the root")
        s = cfg.data.synthetic
        try:
            spec = SyntheticSpec(n_cases=s.n_cases, shape=tuple(s.shape), n_organs=s.n_organs,
                                 spacing=(1.0,) * len(s.shape), seed=s.seed, name=cfg.data.name,
                                 organ_ratios=tuple(s.organ_ratios), organ_gap=s.organ_gap)
        except ValueError as err:
            raise ConfigError(f"data.synthetic: {err}") from None
        path = ensure_synthetic(Path(cfg.data.cache_dir) / "synthetic", spec=spec)
        return load_manifest(path), path.parent
    manifest_path = resolve_project_path(cfg.data.manifest)
    if not manifest_path.is_file():
        raise ConfigError(f"{manifest_path}: manifest of '{cfg.data.name}' not found; an import writes it "
                          "(`ssl-bench data import-msd DIR`, `import-ssl4mis DIR` or `import-uamt DIR`, README \"Data\")")
    manifest = load_manifest(manifest_path)
    root = data_root(cfg, manifest.directory)
    if root is None:
        raise ConfigError(
            f"no data root for '{cfg.data.name}': the folder that holds {manifest.directory}/. Pass data.root=/path "
            f"(through make: `make bench ... ARGS=\"data.root=/path\"`) or set {DATA_ROOT_ENV}=/path (e.g. "
            f"`{DATA_ROOT_ENV}=/path make bench ...`), or fetch the data with `ssl-bench data download "
            f"{cfg.data.name} --root /path`")
    return manifest, root
