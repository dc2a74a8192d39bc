"""Typed configuration: omegaconf structured configs merged from experiments/*.yaml and CLI dotlists.

Order of precedence (later wins): these dataclass defaults < experiments/base.yaml <
experiments/data/<data>.yaml < experiments/method/<method>.yaml < command-line overrides.
Every level is validated against the schema, so an unknown key or a wrong type is an error naming it.
The method section's schema is the method's own config class, in its file (ssl_bench/methods/<name>.py), which the
registry hands over as ``config_class``; its ranges are checked by that class's ``validate``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, NamedTuple, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ssl_bench.data.manifest import DATA_ROOT_ENV
from ssl_bench.data.splits import SELECTIONS
from ssl_bench.registry import get_method
from ssl_bench.utils.dicts import flatten_keys
from ssl_bench.utils.errors import ExplainedError, first_line

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"


class ConfigError(ExplainedError, ValueError):
    """A configuration that cannot be used; the message names the key or file."""


@dataclass
class SyntheticConfig:
    """The generated dataset used when ``data.name=synthetic`` (see ssl_bench/data/synthetic.py)."""
    n_cases: int = 24
    shape: List[int] = field(default_factory=lambda: [32, 32, 32])
    n_organs: int = 3
    seed: int = 0
    # Small separate organs in a large volume (SyntheticSpec): (largest, smallest) share of the image's voxels, the
    # organs between geometric ([]: the default sizes), and the background voxels kept between organs (0: they may
    # touch).
    organ_ratios: List[float] = field(default_factory=list)
    organ_gap: int = 0


@dataclass
class PartialConfig:
    """The partial-annotation protocol (docs/methods.md, "The protocol"; Petit et al. 2018): for each foreground class
    independently, the annotation is removed from ``alpha`` of the labeled training cases, seeded by the
    draw and nested as alpha grows (ssl_bench/data/partial.py). 0 keeps every annotation."""
    alpha: float = 0.0


@dataclass
class DataConfig:
    name: str = "hippocampus"
    # Manifest JSON, relative to the project root or absolute; "" for synthetic (it is generated).
    manifest: str = "data_manifests/hippocampus.json"
    # Folder holding the dataset folders, or several separated by ':' (the first that holds the dataset's folder is
    # used); empty means $SSL_BENCH_DATA_ROOT.
    root: str = ""
    # The labeled share of the training pool's patients (ceil(fraction x patients)), or a number of labeled patients
    # (n_labeled, e.g. 3 or 7 of ACDC's 70 as the SSL4MIS papers): one of the two; setting one clears the other.
    fraction: Optional[float] = 0.1
    n_labeled: Optional[int] = None
    # draw: the first patients of a permutation seeded by data.draw; first: the first patients in manifest order (for
    # an SSL4MIS import, the first of its train list: SSL4MIS's own labeled set); first_then_draw: first at draw 0,
    # draw at later draws (a UA-MT import: the papers' labeled set, then seeded others). Nested across amounts.
    labeled_selection: str = "draw"
    draw: int = 0
    # 3: 3D patches; 2: 2D slices of the same case-level split, evaluated as 3D volumes.
    spatial_dims: int = 3
    slice_axis: int = 2
    # nnU-Net's patch for Task04 (Isensee et al. 2021) is 40x56x40.
    patch_size: List[int] = field(default_factory=lambda: [40, 56, 40])
    labeled_batch_size: int = 4
    unlabeled_batch_size: int = 4
    flip_prob: float = 0.5
    # Mild intensity augmentation (nnU-Net uses multiplicative brightness in [0.75, 1.25]).
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    # Loader processes. With augment_on_device the loader only draws each item's augmentation parameters (no voxel
    # work; 0.2-0.4 ms a step on a CPU core) into batches without tensors, which a worker hands over in 0.16 ms: on a
    # 2-core CPU a worker is on par with none, and 0 avoids their start-up and memory (results/README.md, "Loader
    # workers").
    num_workers: int = 0
    # Training batches cropped, flipped and intensity-changed as batched tensor operations on the training device
    # from volumes held in memory (ssl_bench/data/device_augment.py); exactly the batches of the MONAI chain (False),
    # which runs per patch in the loader.
    augment_on_device: bool = True
    cache_dir: str = ".cache/ssl_bench"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    partial: PartialConfig = field(default_factory=PartialConfig)


@dataclass
class ModelConfig:
    # unet: MONAI UNet (Kerfoot et al. 2018 residual units); basic_unet: MONAI BasicUNet (Falk et al. 2019);
    # fcn: the U-Net's encoder with FCN's summing decoder (Long et al. 2015; ssl_bench/nets/fcn.py); vnet: UA-MT's
    # V-Net (Yu et al. 2019; ssl_bench/nets/vnet.py), channels one entry a level, dropout its channel dropout.
    arch: str = "unet"
    channels: List[int] = field(default_factory=lambda: [16, 32, 64, 128])
    strides: List[int] = field(default_factory=lambda: [2, 2, 2])
    num_res_units: int = 2
    norm: str = "instance"
    # Dropout in every block, the same for every method (docs/methods.md, "The protocol": one budget). The Π-model's
    # two passes need "different dropout masks" (Laine & Aila 2017), UA-MT's K teacher passes "noise + dropout" (Yu et
    # al. 2019) and UMCT's confidence MC dropout (Xia et al. 2020); without it the first two are inert (README
    # "Results").
    # 0.1 is UMCT's rate as this benchmark first used it for co_training.
    dropout: float = 0.1
    # A backbone checkpoint (ssl_bench/nets/pretrained.py) loaded into the network before training, e.g. a
    # contrastive pretraining's checkpoints/backbone.pt; None: random initialisation.
    init_from: Optional[str] = None


def need(ok: bool, key: str, msg: str) -> None:
    """A ConfigError naming ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {msg}")


class Range(NamedTuple):
    """A range check of MethodConfig.check: what a value must satisfy, and the message saying so."""
    ok: Callable[[Any], bool]
    message: str


NON_NEGATIVE = Range(lambda v: v >= 0, "must be >= 0")
POSITIVE = Range(lambda v: v > 0, "must be > 0")
AT_LEAST_ONE = Range(lambda v: v >= 1, "must be >= 1")
UNIT_INTERVAL = Range(lambda v: 0 <= v <= 1, "must be in [0, 1]")
BELOW_ONE = Range(lambda v: 0 <= v < 1, "must be in [0, 1)")
OPEN_UNIT_INTERVAL = Range(lambda v: 0 < v < 1, "must be in (0, 1)")


@dataclass
class MethodConfig:
    """Base of every method's config. A method's own config subclasses it (or a shared one in
    ssl_bench/methods/base_config.py) in the method's file, with its typed hyperparameters and their ranges in
    ``validate``; the registry hands load_config the method's ``config_class``."""
    name: str = "supervised"
    # Which evaluated network is the primary result (e.g. "teacher" for Mean Teacher).
    primary_model: str = "student"

    def validate(self, cfg: DictConfig) -> None:
        """What types alone cannot express about this method's hyperparameters, and about the run's other settings
        it needs (``cfg``: the run's whole config): a ConfigError naming the key. A subclass checks its base's
        first (super().validate(cfg)), then its own fields."""

    def check(self, rule: Range, *fields: str) -> None:
        """``rule`` on each of ``fields``: a ConfigError naming method.<field> and the value found otherwise."""
        for name in fields:
            value = getattr(self, name)
            need(rule.ok(value), f"method.{name}", f"{rule.message}, got {value}")


@dataclass
class OptimConfig:
    # adamw (Loshchilov & Hutter 2019), or sgd with momentum (SSL4MIS's optimizer; experiments/protocol/ssl4mis.yaml).
    name: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    # poly (nnU-Net: (1 - t/T)^0.9), cosine, constant, or step: lr x step_gamma every step_fraction of
    # trainer.max_steps (UA-MT: x 0.1 every 2500 of 6000 iterations).
    schedule: str = "poly"
    poly_power: float = 0.9
    step_fraction: float = 2500 / 6000
    step_gamma: float = 0.1
    warmup_steps: int = 50
    # SGD's momentum (unused by AdamW).
    momentum: float = 0.9


@dataclass
class TrainerConfig:
    max_steps: int = 2000
    val_every_n_steps: int = 250
    accelerator: str = "auto"
    devices: int = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    log_every_n_steps: int = 10
    # Seed for initialisation and augmentation; None uses the draw, so draws differ in split and init.
    seed: Optional[int] = None
    deterministic: bool = False
    enable_progress_bar: bool = True
    # Execution options: how fast a run computes, not what (the same arithmetic, rounded in another order; README
    # "Performance" measures both speed and Dice). torch.compile of every network: none, default, reduce-overhead
    # (CUDA graphs: one launch for a whole pass) or max-autotune.
    compile: str = "none"
    # cuDNN tries its convolution algorithms on the first pass of each shape and keeps the fastest (training
    # patches and sliding windows have fixed shapes).
    cudnn_benchmark: bool = False


@dataclass
class EvalConfig:
    sw_batch_size: int = 4
    sw_overlap: float = 0.5
    # The windows' stride in voxels, one entry per axis (UA-MT's test: 18 x 18 x 4 of a 112 x 112 x 80 window),
    # instead of sw_overlap; None: sw_overlap.
    sw_stride: Optional[List[int]] = None
    hd_percentile: float = 95.0
    save_predictions: bool = False
    # The test-selection audit (ssl_bench/run/test_selection_audit.py): also score the test cases at every
    # validation and evaluate the checkpoint best on them ("test_best"), as public code behind published results
    # selects. Used for nothing else; it costs one evaluation of the test cases per validation.
    test_selection_audit: bool = True


@dataclass
class LoggingConfig:
    wandb: bool = True
    # offline runs need no account: sync later with `wandb sync <run>/wandb/offline-run-*`.
    wandb_mode: str = "offline"
    wandb_project: str = "ssl-bench"
    wandb_entity: Optional[str] = None
    # Extra W&B tags of every run (a sweep adds sweep=<name>); method, fraction and draw are always tagged.
    tags: List[str] = field(default_factory=list)
    log_images: bool = True
    n_images: int = 2


@dataclass
class RunConfig:
    runs_dir: str = "runs"
    # Optional suffix of the method folder, to keep variants (e.g. an lr sweep) apart.
    tag: str = ""
    # A run stopped by SIGTERM scores its best and test_best checkpoints on the test cases before it exits, so that
    # its resumable state is last.ckpt alone (ssl_bench/evidence: a GPU window's bundle carries no other checkpoint).
    score_on_stop: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # A protocol preset, experiments/protocol/<name>.yaml (e.g. ssl4mis: the SSL4MIS papers' ACDC setting), merged
    # after the data config and before the method's; "" for this project's own protocol. Set it as `protocol=<name>`.
    protocol: str = ""


def merge_checked(cfg: DictConfig, other, source: str) -> DictConfig:
    """``other`` merged onto the structured ``cfg``; an unknown key or wrong type is a ConfigError naming it."""
    try:
        return OmegaConf.merge(cfg, other)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        where = f" (key '{key}')" if key else ""
        raise ConfigError(f"{source}{where}: {first_line(err)}") from None


def read_schema_file(schema, path: Path, error=ConfigError):
    """The YAML file at ``path`` as an instance of the dataclass ``schema``; an unknown key, a wrong type or a missing
    value is an ``error`` naming the file."""
    merged = merge_checked(OmegaConf.structured(schema), load_yaml(path), str(path))
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:  # e.g. a list entry without a required value
        raise error(f"{path}: {first_line(err)}") from None


# trainer.compile: no compilation, or a torch.compile mode ("default" is torch's default mode).
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Keys that change how a run executes or logs, not what it computes: a resumed run may change them.
EXECUTION_KEYS = ("logging.", "trainer.log_every_n_steps", "trainer.enable_progress_bar", "trainer.accelerator",
                  "trainer.devices", "trainer.strategy", "trainer.num_nodes", "eval.save_predictions",
                  "eval.sw_batch_size", "data.num_workers", "data.cache_dir", "data.root",
                  "data.augment_on_device", "trainer.compile", "trainer.cudnn_benchmark", "run.score_on_stop")


def schema_defaults() -> dict:
    """The schema's defaults as flat dotted keys: differing_keys' ``defaults`` for two configs. A key that only one
    of them has (added to the schema after the other run was made) is no difference while it keeps its default:
    defaults are chosen so that they compute what older versions did."""
    return flatten_keys(OmegaConf.to_container(OmegaConf.structured(Config)))


def load_yaml(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml errors come in several types
        raise ConfigError(f"{path}: cannot parse YAML ({first_line(err)})") from None
    return loaded if loaded is not None else OmegaConf.create({})


def load_config(method: str, data: str = "hippocampus", overrides: Optional[List[str]] = None,
                experiments_dir: Path = EXPERIMENTS_DIR) -> DictConfig:
    """The fully merged, validated config for one run."""
    method_cls = get_method(method)
    schema = OmegaConf.structured(Config(method=method_cls.config_class(name=method)))
    OmegaConf.set_struct(schema, True)
    cfg = _merge_layer(schema, load_yaml(experiments_dir / "base.yaml"), str(experiments_dir / "base.yaml"))
    data_yaml = data_config_path(data, experiments_dir)
    cfg = _merge_layer(cfg, load_yaml(data_yaml), str(data_yaml))
    cfg = _merge_protocol(cfg, overrides or [], experiments_dir)
    method_yaml = experiments_dir / "method" / f"{method}.yaml"
    if not method_yaml.is_file():
        raise ConfigError(f"method '{method}' is registered but has no {method_yaml}")
    cfg = _merge_layer(cfg, load_yaml(method_yaml), str(method_yaml))
    if overrides:
        try:
            dotlist = OmegaConf.from_dotlist(list(overrides))
        except OmegaConfBaseException as err:
            raise ConfigError(f"command-line overrides: {first_line(err)}") from None
        cfg = merge_checked(cfg, dotlist, "command-line override")
        amounts = [o.split("=", 1)[0] for o in overrides if o.split("=", 1)[0] in LABELED_AMOUNT_KEYS
                   and OmegaConf.select(dotlist, o.split("=", 1)[0]) is not None]
        if amounts:  # the last one given wins, as later overrides do
            _keep_labeled_amount(cfg, amounts[-1])
    if cfg.method.name != method:
        raise ConfigError(f"method.name is '{cfg.method.name}' but the method is '{method}': remove the override")
    validate(cfg)
    return cfg


def data_config_path(data: str, experiments_dir: Path = EXPERIMENTS_DIR) -> Path:
    """The data config of ``--data``: a dataset name (experiments/data/<name>.yaml) or the path of a data YAML."""
    if data.endswith((".yaml", ".yml")) or os.sep in data:
        path = Path(data).expanduser()
        if not path.is_file():
            raise ConfigError(f"--data {data}: no such data config file")
        return path
    path = experiments_dir / "data" / f"{data}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (experiments_dir / "data").glob("*.yaml"))
        raise ConfigError(f"unknown dataset '{data}': no {path} (known: {', '.join(known)}), nor a data YAML path")
    return path


# What a protocol preset may not set: which dataset and method run, and the preset itself.
PROTOCOL_FORBIDDEN_KEYS = ("protocol", "method", "data.name", "data.manifest")


def _merge_protocol(cfg: DictConfig, overrides: List[str], experiments_dir: Path) -> DictConfig:
    """The protocol preset named by the last `protocol=<name>` override, else by the config so far, merged in."""
    given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == "protocol"]
    name = given[-1] if given else cfg.protocol
    if not name:
        return cfg
    path = experiments_dir / "protocol" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (experiments_dir / "protocol").glob("*.yaml"))
        raise ConfigError(f"unknown protocol '{name}': no {path} (known: {', '.join(known) or 'none'})")
    layer = load_yaml(path)
    forbidden = [k for k in PROTOCOL_FORBIDDEN_KEYS if OmegaConf.select(layer, k) is not None]
    if forbidden:
        raise ConfigError(f"{path}: a protocol may not set {', '.join(forbidden)}")
    cfg = _merge_layer(cfg, layer, str(path))
    cfg.protocol = name
    return cfg


# The two ways to say how many patients are labeled; a config holds one of them.
LABELED_AMOUNT_KEYS = ("data.fraction", "data.n_labeled")


def _keep_labeled_amount(cfg: DictConfig, key: str) -> None:
    """Clears the other way of saying how many patients are labeled than ``key``."""
    other = next(k for k in LABELED_AMOUNT_KEYS if k != key)
    OmegaConf.update(cfg, other, None)


def _merge_layer(cfg: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    """merge_checked, and a layer that sets data.fraction or data.n_labeled clears the other (setting both is an
    error)."""
    cfg = merge_checked(cfg, layer, source)
    given = [k for k in LABELED_AMOUNT_KEYS if OmegaConf.select(layer, k) is not None]
    if len(given) > 1:
        raise ConfigError(f"{source}: sets both data.fraction and data.n_labeled; keep one")
    if given:
        _keep_labeled_amount(cfg, given[0])
    return cfg


def validate(cfg: DictConfig) -> None:
    """Checks that types alone cannot express; the method's own in its config's validate."""
    d = cfg.data
    need((d.fraction is None) != (d.n_labeled is None), "data.fraction",
         "give exactly one of data.fraction and data.n_labeled")
    if d.fraction is not None:
        need(0.0 < d.fraction <= 1.0, "data.fraction", f"labeled fraction must be in (0, 1], got {d.fraction}")
    if d.n_labeled is not None:
        need(d.n_labeled >= 1, "data.n_labeled", f"must be >= 1 labeled patient, got {d.n_labeled}")
    need(d.labeled_selection in SELECTIONS, "data.labeled_selection",
         f"must be one of {', '.join(SELECTIONS)}, got '{d.labeled_selection}'")
    need(d.draw >= 0, "data.draw", f"must be >= 0, got {d.draw}")
    need(d.spatial_dims in (2, 3), "data.spatial_dims", f"must be 2 or 3, got {d.spatial_dims}")
    need(len(d.patch_size) == d.spatial_dims, "data.patch_size",
         f"has {len(d.patch_size)} entries but data.spatial_dims is {d.spatial_dims}")
    need(d.labeled_batch_size >= 1, "data.labeled_batch_size", "must be >= 1")
    need(d.unlabeled_batch_size >= 1, "data.unlabeled_batch_size", "must be >= 1")
    need(0.0 <= d.flip_prob <= 1.0, "data.flip_prob", "must be in [0, 1]")
    need(0.0 <= d.partial.alpha <= 1.0, "data.partial.alpha",
         f"fraction of cases whose annotation of each class is removed must be in [0, 1], got {d.partial.alpha}")
    need(cfg.model.arch in ("unet", "basic_unet", "fcn", "vnet"), "model.arch",
         f"unknown architecture '{cfg.model.arch}'")
    if cfg.model.arch == "vnet":
        divisor = 2 ** (len(cfg.model.channels) - 1)
        need(all(s % divisor == 0 for s in d.patch_size), "data.patch_size",
             f"vnet with {len(cfg.model.channels)} levels needs sides that are multiples of {divisor}, got "
             f"{list(d.patch_size)}")
    if cfg.model.arch in ("unet", "fcn"):
        need(len(cfg.model.strides) == len(cfg.model.channels) - 1, "model.strides",
             "needs one entry fewer than model.channels")
    need(0.0 <= cfg.model.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    need(cfg.optim.schedule in ("poly", "cosine", "constant", "step"), "optim.schedule",
         f"must be poly, cosine, constant or step, got '{cfg.optim.schedule}'")
    need(0.0 < cfg.optim.step_fraction <= 1.0, "optim.step_fraction", "must be in (0, 1]")
    need(0.0 < cfg.optim.step_gamma <= 1.0, "optim.step_gamma", "must be in (0, 1]")
    need(cfg.optim.lr > 0, "optim.lr", "must be > 0")
    need(cfg.optim.name in ("adamw", "sgd"), "optim.name", f"must be adamw or sgd, got '{cfg.optim.name}'")
    need(0.0 <= cfg.optim.momentum < 1.0, "optim.momentum", "must be in [0, 1)")
    need(cfg.trainer.max_steps >= 1, "trainer.max_steps", "must be >= 1")
    need(cfg.trainer.val_every_n_steps >= 1, "trainer.val_every_n_steps", "must be >= 1")
    need(cfg.trainer.compile in COMPILE_MODES, "trainer.compile",
         f"must be one of {', '.join(COMPILE_MODES)}, got '{cfg.trainer.compile}'")
    need(0.0 <= cfg.eval.sw_overlap < 1.0, "eval.sw_overlap", "must be in [0, 1)")
    if cfg.eval.sw_stride is not None:
        need(len(cfg.eval.sw_stride) == d.spatial_dims and all(1 <= s <= p for s, p in
                                                               zip(cfg.eval.sw_stride, d.patch_size)),
             "eval.sw_stride", f"needs {d.spatial_dims} strides between 1 and the patch side, got "
             f"{list(cfg.eval.sw_stride)}")
    need(cfg.logging.wandb_mode in ("offline", "online", "disabled"), "logging.wandb_mode",
         "must be offline, online or disabled")
    OmegaConf.to_object(cfg.method).validate(cfg)


def run_seed(cfg: DictConfig) -> int:
    """The seed of initialisation and augmentation: trainer.seed, or the draw (so draws differ in split and init)."""
    return cfg.trainer.seed if cfg.trainer.seed is not None else cfg.data.draw


def data_roots(root: str) -> List[Path]:
    """The folders of ``root`` (several separated by ':'), else of $SSL_BENCH_DATA_ROOT; [] if neither is set."""
    root = root or os.environ.get(DATA_ROOT_ENV, "")
    return [Path(part).expanduser() for part in root.split(os.pathsep) if part]


def data_root(cfg: DictConfig, directory: str = "") -> Optional[Path]:
    """The data root of data.root (else $SSL_BENCH_DATA_ROOT) that holds ``directory``, else its first; None if
    neither is set."""
    roots = data_roots(cfg.data.root)
    return next((r for r in roots if directory and (r / directory).is_dir()), roots[0] if roots else None)


def resolve_project_path(path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def config_from_container(container: dict, source: str) -> DictConfig:
    """A run's resolved config saved as plain data (a checkpoint's hyperparameters, a run's config.yaml) as the
    typed config again, its method's schema included; a key this version does not know is an error naming it."""
    method = container.get("method", {}).get("name") if isinstance(container, dict) else None
    if not method:
        raise ConfigError(f"{source}: no method.name")
    schema = OmegaConf.structured(Config(method=get_method(method).config_class(name=method)))
    OmegaConf.set_struct(schema, True)
    return merge_checked(schema, container, source)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
