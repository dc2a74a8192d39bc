"""Typed configuration: omegaconf structured configs merged from experiments/*.yaml and CLI dotlists.

Order of precedence (later wins): these dataclass defaults < experiments/base.yaml <
experiments/data/<data>.yaml < experiments/method/<method>.yaml < command-line overrides.
Every level is validated against the schema, so an unknown key or a wrong type is an error naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ssl_bench.data.manifest import DATA_ROOT_ENV
from ssl_bench.data.splits import SELECTIONS
from ssl_bench.labeled import LabeledAmount
from ssl_bench.registry import get_method

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key or file."""


@dataclass
class SyntheticConfig:
    """The generated dataset used when ``data.name=synthetic`` (see ssl_bench/data/synthetic.py)."""
    n_cases: int = 24
    shape: List[int] = field(default_factory=lambda: [32, 32, 32])
    n_organs: int = 3
    seed: int = 0


@dataclass
class PartialConfig:
    """The partial-annotation protocol (METHODS.md; Petit et al. 2018): for each foreground class
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
    # Dropout in every block, the same for every method (METHODS.md: same backbone). The Π-model's two passes need
    # "different dropout masks" (Laine & Aila 2017), UA-MT's K teacher passes "noise + dropout" (Yu et al. 2019)
    # and UMCT's confidence MC dropout (Xia et al. 2020); without it the first two are inert (README "Results").
    # 0.1 is UMCT's rate as this benchmark first used it for co_training.
    dropout: float = 0.1
    # A backbone checkpoint (ssl_bench/nets/pretrained.py) loaded into the network before training, e.g. a
    # contrastive pretraining's checkpoints/backbone.pt; None: random initialisation.
    init_from: Optional[str] = None


@dataclass
class MethodConfig:
    """Base of every method's config; each method subclasses it with its own typed hyperparameters."""
    name: str = "supervised"
    # Which evaluated network is the primary result (e.g. "teacher" for Mean Teacher).
    primary_model: str = "student"


@dataclass
class SemiSupervisedConfig(MethodConfig):
    """Loss = L_sup + λ(t)·L_unsup with λ(t) = lambda_max·exp(-5(1 - t/T_r)^2) (Laine & Aila 2017)."""
    lambda_max: float = 0.1
    # T_r as a fraction of trainer.max_steps (METHODS.md: 40% of the run).
    rampup_fraction: float = 0.4


@dataclass
class NoisyConsistencyConfig(SemiSupervisedConfig):
    """Consistency under additive input noise η ~ N(0, noise_std²) clipped to ±noise_clip per voxel.

    Defaults from Yu et al. 2019 (UA-MT code): std 0.1, clip 0.2, on z-scored images.
    """
    noise_std: float = 0.1
    noise_clip: float = 0.2


@dataclass
class MeanTeacherConfig(NoisyConsistencyConfig):
    # EMA decay α of the teacher's weights (Tarvainen & Valpola 2017; Yu et al. 2019: 0.99).
    ema_decay: float = 0.99


@dataclass
class UAMTConfig(MeanTeacherConfig):
    # Yu et al. 2019: K = 8 stochastic teacher passes; entropy threshold from 0.75 to 1.0 of ln C.
    mc_passes: int = 8
    threshold_start: float = 0.75
    threshold_end: float = 1.0


@dataclass
class TransformConsistencyConfig(SemiSupervisedConfig):
    # Probability of flipping each spatial axis; 0.5 makes every combination of flips equally likely.
    flip_prob: float = 0.5


@dataclass
class SmileConfig(MethodConfig):
    """SMILE (Petit et al. 2018): K sigmoid binary classifiers, BCE weighted by the ambiguity map."""
    # Soft Dice on the annotated (case, organ) pairs added to the BCE ("Dice may be added", METHODS.md).
    dice_on_annotated: bool = True
    # Organ k is predicted where sigmoid(ŷ_k) > threshold (Petit et al. 2018: 0.5); also SMILEr's
    # "predicted positive".
    threshold: float = 0.5


@dataclass
class SmilerConfig(SmileConfig):
    """SMILEr (Petit et al. 2018): SMILE, then R curriculum relabeling rounds with γ_t = (t/R)·γ_max."""
    # R and γ_max of Petit et al. 2018.
    relabel_rounds: int = 3
    gamma_max: float = 1.0
    # Plain SMILE for this fraction of trainer.max_steps; the R rounds then start evenly spaced over the rest,
    # so SMILEr has the same total budget as every method. Petit et al. train SMILE first, then relabel.
    smile_phase_fraction: float = 0.5


@dataclass
class AdversarialConfig(MethodConfig):
    """Adversarial learning on probability maps (Zhang et al. 2017 DAN; Hung et al. 2018): defaults are Hung
    et al.'s semi-supervised setting, as METHODS.md lists them. The weights are constant (no λ(t) ramp):
    Hung et al. delay the self-training term instead (semi_start_fraction)."""
    # Segmenter's BCE(D(p), 1) on labeled and on unlabeled images (Hung et al.: λ_adv = 0.001).
    lambda_adv_labeled: float = 0.001
    lambda_adv_unlabeled: float = 0.001
    # Confidence-masked self-training CE on unlabeled images (Hung et al.: λ_semi = 0.1, T_semi = 0.2).
    lambda_semi: float = 0.1
    semi_threshold: float = 0.2
    # Self-training starts after this fraction of trainer.max_steps (METHODS.md: 5% of the run).
    semi_start_fraction: float = 0.05
    # D: Adam, lr 1e-4, betas (0.9, 0.99); four stride-2 convolutions of 64-512 channels (Hung et al.).
    discriminator_lr: float = 1e-4
    discriminator_betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    discriminator_channels: List[int] = field(default_factory=lambda: [64, 128, 256, 512])
    # Hung et al. feed D the probability map only; Zhang et al.'s DAN concatenates the image.
    discriminator_with_image: bool = False


@dataclass
class CoTrainingConfig(SemiSupervisedConfig):
    """Uncertainty-aware multi-view co-training (UMCT, Xia et al. 2020), with the protocol's λ(t) ramp."""
    # Views = cyclic permutations of the spatial axes; None: one per spatial axis (3D: 3, 2D: 2), as UMCT.
    views: Optional[int] = None
    # MC-dropout passes per view for the confidence (UMCT: Bayesian via MC dropout; K = 8 as UA-MT here).
    mc_passes: int = 8
    # Keeps the confidence 1/(variance + ε) finite where all passes agree exactly.
    variance_epsilon: float = 1e-6


@dataclass
class CPSConfig(SemiSupervisedConfig):
    """Cross pseudo supervision (Chen et al., CVPR 2021): two networks, each trained on the other's hard
    pseudo-labels, L = L_sup + λ(t)·L_cps, with SSL4MIS's medical weight and ramp as METHODS.md asks."""
    # SSL4MIS (train_cross_pseudo_supervision_2D.py / _3D.py): consistency 0.1 with the sigmoid ramp over 200 "epochs"
    # of 150 iterations, i.e. over its whole 30000-iteration run. Chen et al.'s code (TorchSemiSeg): a constant
    # λ = 1.5 on PASCAL VOC and 6 on Cityscapes.
    lambda_max: float = 0.1
    rampup_fraction: float = 1.0
    # L_cps on the labeled images too, L_cps = L_cps^l + L_cps^u (Chen et al. 2021, METHODS.md); SSL4MIS applies it
    # to the unlabeled images only (false).
    on_labeled: bool = True


@dataclass
class UniMatchConfig(SemiSupervisedConfig):
    """Weak-to-strong consistency with a feature-perturbation stream (UniMatch, Yang et al., CVPR 2023); FixMatch
    (Sohn et al. 2020) is strong_views=1 with feature_perturbation=false. Defaults: the authors' medical code
    (LiheYoung/UniMatch, more-scenarios/medical) unless a comment says otherwise."""
    # λ = 1 without ramp (Yang et al.: loss = (L_x + L_u) / 2, equal weights); a ramp only if the config asks.
    lambda_max: float = 1.0
    rampup_fraction: float = 0.0
    # A pseudo-label counts where max p(u_w) >= τ (the medical code's conf_thresh 0.95, as in the paper).
    confidence_threshold: float = 0.95
    # Strong views per unlabeled image: 2 (UniMatch's dual stream) or 1 (FixMatch).
    strong_views: int = 2
    # The stream that decodes the weak view's bottleneck after channel dropout (UniMatch; false for FixMatch).
    feature_perturbation: bool = True
    # Its dropout rate: nn.Dropout2d(0.5) in the authors' code (there on every encoder level, here on the
    # bottleneck as METHODS.md defines it).
    feature_dropout: float = 0.5
    # L against a pseudo-label: "dice_ce", masked CE + Dice (METHODS.md); "dice", the medical code's masked Dice only.
    pseudo_label_loss: str = "dice_ce"
    # Strong intensity augmentation (ssl_bench/utils/strong_augment.py). Contrast: the medical code's
    # ColorJitter(0.5, 0.5, 0.5, 0.25) with p 0.8 (on a grey image its contrast term is this blend with the mean);
    # blur: p 0.5, σ ~ U(0.1, 2.0) voxels (the code's PIL GaussianBlur radius); gamma and noise, which METHODS.md
    # adds, from nnU-Net (Isensee et al. 2021): gamma ~ U(0.7, 1.5) with p 0.3, Gaussian noise of std ~ U(0, 0.1)
    # with p 0.1 (batchgenerators draws its "variance" in (0, 0.1) and uses it as the std).
    contrast_prob: float = 0.8
    contrast_range: float = 0.5
    gamma_prob: float = 0.3
    gamma_range: List[float] = field(default_factory=lambda: [0.7, 1.5])
    blur_prob: float = 0.5
    blur_sigma: List[float] = field(default_factory=lambda: [0.1, 2.0])
    noise_prob: float = 0.1
    noise_std_max: float = 0.1
    # CutMix box from another unlabeled image of the batch, with that image's pseudo-label and confidence
    # (the medical code's obtain_cutmix_box: p 0.5, area U(0.02, 0.4) of the patch, side ratio U(0.3, 1/0.3)).
    cutmix_prob: float = 0.5
    cutmix_area: List[float] = field(default_factory=lambda: [0.02, 0.4])
    cutmix_aspect: List[float] = field(default_factory=lambda: [0.3, 1 / 0.3])


@dataclass
class BCPConfig(MethodConfig):
    """Bidirectional copy-paste inside Mean Teacher (Bai et al., CVPR 2023; DeepMed-Lab-ECNU/BCP code)."""
    # Stage 1 (copy-paste between labeled images) for this fraction of trainer.max_steps, then stage 2. Bai et al.
    # pre-train 10k of 40k iterations on ACDC (their LA script: 2k, then 15k).
    stage1_fraction: float = 0.25
    # false: stage 1 for the whole run, BCP's control (supervised copy-paste, no unlabeled image).
    unlabeled_stage: bool = True
    # EMA decay of the stage-2 teacher (Bai et al.'s code: 0.99).
    ema_decay: float = 0.99
    # α: weight of the voxels that come from an unlabeled image (Bai et al.: u_weight 0.5).
    unlabeled_weight: float = 0.5
    # Side of the pasted box as a fraction of each patch side (Bai et al.: mask_ratio 2/3).
    box_fraction: float = 2 / 3
    # Teacher pseudo-labels reduced to the largest connected component of each class (Bai et al.: nms=1).
    largest_component: bool = True


# The default 3D pretraining slab, in network strides: three (a bottleneck three voxels thick), chosen on
# hippocampus validation Dice among one, two and three strides (README "Results on hippocampus"). One stride
# (the patch over the 4 partitions, the default until session 11) lost to supervised; three was level with it.
DEFAULT_SLAB_STRIDES = 3


@dataclass
class ContrastiveConfig(MethodConfig):
    """Global and local contrastive pretraining (Chaitanya et al., NeurIPS 2020), then fine-tuning on the
    labeled cases. The pretraining runs once per dataset and draw on every training-pool image, no labels."""
    # Pretraining iterations, a budget of its own reported separately; None: trainer.max_steps, the same
    # iterations as every method's training (Chaitanya et al. pretrain 10000).
    pretrain_steps: Optional[int] = None
    # Volumes per pretraining batch, each giving one crop per partition, each crop in two augmentations.
    pretrain_volumes: int = 4
    # Partitions of the volume's main axis (data.slice_axis); Chaitanya et al.: 4.
    partitions: int = 4
    # 3D: the crops' extent along the main axis (a slab, so that partitions differ: a hippocampus patch is as
    # long as the volume); None: DEFAULT_SLAB_STRIDES network strides, at most patch_size along that axis
    # rounded down to a multiple of the stride (at least one stride). 2D crops are slices of their partition.
    slab_thickness: Optional[int] = None
    # NT-Xent temperature of the global and of the local loss (Chaitanya et al.: 0.1 for both).
    temperature: float = 0.1
    local_temperature: float = 0.1
    # Output size of the projection heads (Chaitanya et al.: 128).
    projection_dim: int = 128
    # Local regions: a local_grid^dims grid of cells over the decoder feature map, each its mean feature.
    local_grid: int = 4
    # Pretraining loss = global + local_weight · local.
    local_weight: float = 1.0
    # Probability of flipping each spatial axis in a pretraining augmentation (then a random 90° rotation).
    flip_prob: float = 0.5


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
    # The test-selection audit (ssl_bench/audit.py): also score the test cases at every validation and evaluate the
    # checkpoint best on them ("test_best"), as public code behind published results selects. Used for nothing
    # else; it costs one evaluation of the test cases per validation.
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


# trainer.compile: no compilation, or a torch.compile mode ("default" is torch's default mode).
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Keys that change how a run executes or logs, not what it computes: a resumed run may change them.
EXECUTION_KEYS = ("logging.", "trainer.log_every_n_steps", "trainer.enable_progress_bar", "trainer.accelerator",
                  "trainer.devices", "trainer.strategy", "trainer.num_nodes", "eval.save_predictions",
                  "eval.sw_batch_size", "data.num_workers", "data.cache_dir", "data.root",
                  "data.augment_on_device", "trainer.compile", "trainer.cudnn_benchmark")


def flatten_keys(tree: dict, prefix: str = "") -> dict:
    """A nested dict as {"dotted.key": leaf value}, e.g. to compare two configs key by key."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_keys(a: dict, b: dict, ignore: Tuple[str, ...] = ()) -> List[str]:
    """The dotted keys whose values differ between two flat configs (flatten_keys), except those starting with
    ``ignore``. A key that only one side has (added to the schema after the other run was made) is no difference
    while it keeps its schema default: defaults are chosen so that they compute what older versions did."""
    schema = flatten_keys(OmegaConf.to_container(OmegaConf.structured(Config)))

    def added_with_default(k: str) -> bool:
        present = b if k not in a else a if k not in b else None
        return present is not None and k in schema and present[k] == schema[k]

    return sorted(k for k in a.keys() | b.keys()
                  if a.get(k) != b.get(k) and not k.startswith(ignore) and not added_with_default(k))


def first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]


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


def labeled_setting(cfg: DictConfig) -> str:
    """How the run's labeled patients were chosen, as its folder names it: frac<f> or labeled<n>, with -first for
    data.labeled_selection=first (ssl_bench/labeled.py)."""
    return LabeledAmount.of(cfg.data).folder


def validate(cfg: DictConfig) -> None:
    """Checks that types alone cannot express."""
    def need(ok: bool, key: str, msg: str):
        if not ok:
            raise ConfigError(f"{key}: {msg}")

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
    _validate_method(cfg.method, need)
    _validate_views(cfg, need)
    _validate_copy_paste(cfg, need)


def _validate_method(m, need) -> None:
    """Ranges of the method hyperparameters that exist in this method's config."""
    def check(field: str, ok, msg: str):
        if field in m:
            need(ok(m[field]), f"method.{field}", f"{msg}, got {m[field]}")

    check("lambda_max", lambda v: v >= 0, "must be >= 0")
    check("rampup_fraction", lambda v: 0 <= v <= 1, "must be in [0, 1]")
    check("ema_decay", lambda v: 0 <= v < 1, "must be in [0, 1)")
    check("noise_std", lambda v: v >= 0, "must be >= 0")
    check("noise_clip", lambda v: v >= 0, "must be >= 0")
    check("mc_passes", lambda v: v >= 1, "must be >= 1")
    check("flip_prob", lambda v: 0 <= v <= 1, "must be in [0, 1]")
    check("threshold_end", lambda v: m.threshold_start <= v, "must be >= method.threshold_start")
    check("threshold", lambda v: 0 < v < 1, "must be in (0, 1)")
    check("relabel_rounds", lambda v: v >= 1, "must be >= 1")
    check("gamma_max", lambda v: 0 < v <= 1, "must be in (0, 1]")
    check("smile_phase_fraction", lambda v: 0 <= v < 1, "must be in [0, 1)")
    for weight in ("lambda_adv_labeled", "lambda_adv_unlabeled", "lambda_semi"):
        check(weight, lambda v: v >= 0, "must be >= 0")
    check("semi_threshold", lambda v: 0 <= v <= 1, "must be in [0, 1]")
    check("semi_start_fraction", lambda v: 0 <= v <= 1, "must be in [0, 1]")
    check("discriminator_lr", lambda v: v > 0, "must be > 0")
    check("discriminator_betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "must be two values in [0, 1)")
    check("discriminator_channels", lambda v: len(v) >= 1 and all(c >= 1 for c in v), "must be >= 1 channel counts")
    check("variance_epsilon", lambda v: v > 0, "must be > 0")
    check("pretrain_steps", lambda v: v is None or v >= 1, "must be >= 1 (or null: trainer.max_steps)")
    check("pretrain_volumes", lambda v: v >= 2, "must be >= 2 (positives across volumes, Chaitanya et al.)")
    check("partitions", lambda v: v >= 1, "must be >= 1")
    check("slab_thickness", lambda v: v is None or v >= 1, "must be >= 1 (or null: derived from the patch)")
    check("temperature", lambda v: v > 0, "must be > 0")
    check("local_temperature", lambda v: v > 0, "must be > 0")
    check("projection_dim", lambda v: v >= 1, "must be >= 1")
    check("local_grid", lambda v: v >= 2, "must be >= 2 (a region needs other regions as negatives)")
    check("local_weight", lambda v: v >= 0, "must be >= 0")
    check("confidence_threshold", lambda v: 0 <= v <= 1, "must be in [0, 1]")
    check("strong_views", lambda v: v in (1, 2), "must be 1 (FixMatch) or 2 (UniMatch)")
    check("feature_dropout", lambda v: 0 <= v < 1, "must be in [0, 1)")
    check("pseudo_label_loss", lambda v: v in ("dice_ce", "dice"), "must be dice_ce or dice")
    for prob in ("contrast_prob", "gamma_prob", "blur_prob", "noise_prob", "cutmix_prob"):
        check(prob, lambda v: 0 <= v <= 1, "must be in [0, 1]")
    check("contrast_range", lambda v: 0 <= v < 1, "must be in [0, 1)")
    check("noise_std_max", lambda v: v >= 0, "must be >= 0")
    check("gamma_range", lambda v: len(v) == 2 and 0 < v[0] <= v[1], "must be [low, high] with 0 < low <= high")
    check("blur_sigma", lambda v: len(v) == 2 and 0 <= v[0] <= v[1], "must be [low, high] with 0 <= low <= high")
    check("cutmix_area", lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1, "must be [low, high] in (0, 1]")
    check("cutmix_aspect", lambda v: len(v) == 2 and 0 < v[0] <= v[1], "must be [low, high] with 0 < low <= high")
    check("stage1_fraction", lambda v: 0 <= v <= 1, "must be in [0, 1]")
    check("unlabeled_weight", lambda v: v >= 0, "must be >= 0")
    check("box_fraction", lambda v: 0 < v < 1, "must be in (0, 1)")


def _validate_views(cfg, need) -> None:
    """co_training: the number of views, and the dropout its MC passes need."""
    m, dims = cfg.method, cfg.data.spatial_dims
    if "views" not in m:
        return
    if m.views is not None:
        need(2 <= m.views <= dims, "method.views", f"must be in [2, data.spatial_dims={dims}], got {m.views}")
    need(m.mc_passes == 1 or cfg.model.dropout > 0, "model.dropout",
         "co_training's confidence is MC dropout (Xia et al. 2020): with method.mc_passes > 1 set model.dropout > 0 "
         "(the protocol's backbone has 0.1), or method.mc_passes=1 for an unweighted average of views")


def _validate_copy_paste(cfg, need) -> None:
    """bcp mixes the two halves of the labeled batch (stage 1) and pairs labeled with unlabeled images (stage 2)."""
    if "box_fraction" not in cfg.method:
        return
    d = cfg.data
    need(d.labeled_batch_size % 2 == 0, "data.labeled_batch_size",
         f"bcp pastes between the two halves of the labeled batch: must be even, got {d.labeled_batch_size}")
    if cfg.method.unlabeled_stage:
        need(d.unlabeled_batch_size == d.labeled_batch_size, "data.unlabeled_batch_size",
             f"bcp pairs each labeled image with an unlabeled one: must equal data.labeled_batch_size "
             f"({d.labeled_batch_size}), got {d.unlabeled_batch_size}")


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


def dataset_dir_name(cfg: DictConfig) -> str:
    """The runs folder of a dataset: its name, with its protocol preset when one is set (acdc-ssl4mis), so that
    runs of another protocol never share a folder."""
    return cfg.data.name + (f"-{cfg.protocol}" if cfg.protocol else "")


def run_dir(cfg: DictConfig) -> Path:
    """runs/<dataset>[-<protocol>]/<method>[-<tag>]/<frac<f> | labeled<n>>[-first]/draw<d>/ (labeled_setting)."""
    method = cfg.method.name + (f"-{cfg.run.tag}" if cfg.run.tag else "")
    return Path(cfg.run.runs_dir) / dataset_dir_name(cfg) / method / labeled_setting(cfg) / f"draw{cfg.data.draw}"


def pretrain_run_dir(cfg: DictConfig, stage: str) -> Path:
    """runs/<dataset>[-<protocol>]/<stage>[-<tag>]/draw<d>/: a stage shared by every fraction of one draw."""
    name = stage + (f"-{cfg.run.tag}" if cfg.run.tag else "")
    return Path(cfg.run.runs_dir) / dataset_dir_name(cfg) / name / f"draw{cfg.data.draw}"


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
