"""The one base LightningModule: training step, evaluation, logging, optimizer and schedule.

A method subclasses ``SegmentationMethod``, registers itself, and overrides what it changes:

- ``unsupervised_loss(batch, cache)``: the method's extra term; the base adds
  ``unsupervised_weight() * unsupervised_loss`` (λ_max · sigmoid ramp-up) to the supervised loss;
- ``supervised_loss(labeled, cache)`` where the supervised term differs (e.g. partial labels);
- ``evaluation_networks()`` to evaluate more than the student (e.g. an EMA teacher), and
  ``training_networks()`` where a step runs networks that are not evaluated (e.g. a discriminator);
- ``decode(logits)`` where predictions are not a softmax argmax;
- ``prepare_run(cfg)`` (a classmethod) where a run needs work done before it, shared with other runs (e.g.
  contrastive pretraining, once per dataset and draw).

With ``model.init_from`` set, the network starts from that backbone checkpoint (ssl_bench/nets/pretrained.py),
loaded before any copy of it (an EMA teacher) is made.

A method that steps its own optimizers (manual optimization, e.g. adversarial) is the only kind that
overrides ``training_step``; it puts everything but the optimizer steps into a pure ``losses(batch)``,
which tests and ``make perf`` call without a Trainer.

``cache`` is a per-step dict in which the supervised pass leaves its outputs (e.g. the student's
logits on the labeled batch) so a method never recomputes a forward pass it already paid for. It starts with
the step's whole batch under "batch", for a supervised term that needs the unlabeled images too (bcp's mixed
images hold labeled and unlabeled voxels).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import lightning.pytorch as pl
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import CatMetric

from ssl_bench.config import MethodConfig, config_from_container, run_seed
from ssl_bench.data.stream import position_generator
from ssl_bench.nets.backbone import Backbone, build_backbone
from ssl_bench.nets.pretrained import architecture, load_backbone
from ssl_bench.run.evaluation import VALIDATION_METRICS, case_metrics, case_row, nanmean, scored_metrics, window_overlap
from ssl_bench.utils.ramps import learning_rate_factor, sigmoid_rampup

# Forward calls of a training step: {training network: images of each call, in order}.
Passes = Dict[str, List[int]]


class SegmentationMethod(pl.LightningModule):
    config_class = MethodConfig
    # Whether training batches carry an "unlabeled" stream (loaded only for methods that use it).
    uses_unlabeled = False
    # Whether labeled patches carry ``voxel_index`` (each voxel's index in its volume; see data/partial.py).
    uses_voxel_index = False
    method_name = "base"
    # Its colour in every figure of the report (ssl_bench/report/plots.py); None: a free colour of the report's
    # palette, chosen by the method's name.
    plot_colour: Optional[str] = None

    def __init__(self, cfg, class_names: List[str], case_ids: List[str]):
        """``cfg``: the run's config, or the plain data a checkpoint keeps of it (``load_from_checkpoint``)."""
        super().__init__()
        if not isinstance(cfg, DictConfig):
            cfg = config_from_container(cfg, "checkpoint hyperparameters")
        self.cfg = cfg
        # Every checkpoint carries what rebuilds its module: ``MeanTeacher.load_from_checkpoint("last.ckpt")`` (as plain
        # data, so that torch.load(weights_only=True) still reads it). model.init_from is left out: the checkpoint
        # holds every weight, and the backbone file it names need not exist where the checkpoint is loaded.
        hparams_cfg = OmegaConf.to_container(cfg, resolve=True)
        hparams_cfg["model"]["init_from"] = None
        self.save_hyperparameters({"cfg": hparams_cfg, "class_names": list(class_names), "case_ids": list(case_ids)},
                                  logger=False)
        self.class_names = list(class_names)
        self.foreground = self.class_names[1:]
        self.case_ids = list(case_ids)
        self.num_classes = len(self.class_names)
        self.net = self.build_network()
        if cfg.model.init_from:
            load_backbone(self.net, Path(cfg.model.init_from), self.backbone_architecture())
        self.dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)
        # Set by the runner before each trainer.test call: which checkpoint is being evaluated.
        self.checkpoint_tag = "last"
        self.test_rows: List[dict] = []
        self._stores: Dict[str, CatMetric] = {}
        self._scored_with_hd: Dict[str, bool] = {}  # per stage: whether its rows hold HD95 (their width)
        # Decided once: asking a structured config for a field it lacks costs a formatted exception, every step.
        self._unsupervised_term_off = "lambda_max" in cfg.method and cfg.method.lambda_max == 0

    # ---- what methods override -------------------------------------------------------------------
    def build_network(self) -> Backbone:
        """The shared backbone (same factory for every method and every extra network)."""
        return build_backbone(self.cfg.model, self.cfg.data.spatial_dims, in_channels=1,
                              out_channels=self.num_classes)

    def backbone_architecture(self) -> dict:
        """What a backbone checkpoint must match to be loaded into ``self.net``."""
        return architecture(self.cfg.model, self.cfg.data.spatial_dims, in_channels=1, out_channels=self.num_classes)

    @classmethod
    def prepare_run(cls, cfg) -> Tuple[object, Dict[str, object]]:
        """Called by train() before a run starts (or resumes): the run's config, possibly completed (e.g. with
        ``model.init_from``), and entries for its metrics.json (e.g. a prerequisite stage's cost)."""
        return cfg, {}

    @classmethod
    def run_config(cls, cfg):
        """The config train() saves for ``cfg`` (prepare_run's completion, without its work), e.g. to compare a
        sweep cell with a record of it."""
        return cfg

    def supervised_loss(self, labeled: dict, cache: dict) -> torch.Tensor:
        logits = self.net(labeled["image"])
        cache["labeled_logits"] = logits
        return self.dice_ce(logits, labeled["label"])

    def unsupervised_loss(self, batch: dict, cache: dict) -> Optional[torch.Tensor]:
        return None

    def rampup(self) -> float:
        """exp(-5 (1 - t/T_r)^2) at the current step, T_r = method.rampup_fraction · max_steps (docs/methods.md,
        "The shared ramp").

        Needs a ``SemiSupervisedConfig``; the one ramp every schedule of a method follows.
        """
        rampup_steps = self.cfg.method.rampup_fraction * self.cfg.trainer.max_steps
        return sigmoid_rampup(self.global_step, rampup_steps)

    def stream_generator(self, part: dict, purpose: str) -> torch.Generator:
        """A generator on the module's device for the random choices a training step makes about batch ``part``
        (``batch["labeled"]`` or ``batch["unlabeled"]``; e.g. strong augmentation, CutMix boxes), seeded by the run's
        seed, ``purpose`` and the part's stream positions, so that a resumed run makes the same choices."""
        return position_generator(run_seed(self.cfg), purpose, part["position"], self.device)

    def unsupervised_weight(self) -> float:
        """λ(t) = λ_max · rampup(t); called only for methods whose unsupervised_loss returns a term."""
        return self.cfg.method.lambda_max * self.rampup()

    def unsupervised_term_off(self) -> bool:
        """method.lambda_max = 0, an ablation (e.g. co_training's views without co-training): λ(t) is 0 at every
        step, so training_step skips the term's passes rather than paying for them to multiply them by 0."""
        return self._unsupervised_term_off

    def evaluation_networks(self) -> Dict[str, nn.Module]:
        return {"student": self.net}

    def training_networks(self) -> Dict[str, nn.Module]:
        """The networks a training step runs (what ``make perf`` and the forward-count tests record)."""
        return self.evaluation_networks()

    @classmethod
    def perf_overrides(cls, cfg) -> List[str]:
        """Overrides under which ``make perf`` times the method unless told otherwise: those that put its timed steps
        in the phase that dominates its budget (bcp: its second stage). None where every step costs the same."""
        return []

    @classmethod
    def supervised_passes(cls, cfg) -> Passes:
        """The forward calls of the supervised term: {training network: images of each call, in order}."""
        return {"student": [cfg.data.labeled_batch_size]}

    @classmethod
    def unsupervised_passes(cls, cfg, step: int) -> Passes:
        """The forward calls of the unsupervised term at ``step``, after the supervised ones (supervised_passes)."""
        return {}

    @classmethod
    def forward_passes(cls, cfg, step: int = 0) -> Passes:
        """The method's declared cost: the forward calls one training step at ``step`` makes, per network of
        training_networks(), each call's images as a list (e.g. Mean Teacher: {"student": [L, U], "teacher": [U]}),
        each group of passes batched into one call: its analytic minimum. tests/test_methods.py holds every step to
        it and ``make perf`` flags a step that makes other passes. With method.lambda_max = 0 the unsupervised
        passes are skipped, as training_step skips them."""
        passes = {name: list(sizes) for name, sizes in cls.supervised_passes(cfg).items()}
        if not ("lambda_max" in cfg.method and cfg.method.lambda_max == 0):
            for name, sizes in cls.unsupervised_passes(cfg, step).items():
                passes.setdefault(name, []).extend(sizes)
        return passes

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, ...) to a label map (B, ...)."""
        return logits.argmax(dim=1)

    def run_records(self) -> Dict[str, object]:
        """{file name: JSON-able content} the runner writes into the run folder after training (e.g. SMILEr's
        relabeling rounds)."""
        return {}

    # ---- execution ------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """trainer.compile: torch.compile every network a step or an evaluation runs, once (Lightning calls this
        before each fit and test). A network that holds another (co_training's ensemble of its views) is left to
        its compiled parts. Compiling in place keeps parameter names, so checkpoints are unchanged."""
        mode = self.cfg.trainer.compile
        if mode == "none":
            return
        networks = list({id(n): n for n in [*self.training_networks().values(),
                                            *self.evaluation_networks().values()]}.values())
        for net in networks:
            holds_another = any(other is not net and any(m is other for m in net.modules()) for other in networks)
            if not holds_another and getattr(net, "_compiled_call_impl", None) is None:
                net.compile(mode=None if mode == "default" else mode)

    def log(self, name: str, value, *args, **kwargs) -> None:
        """Lightning's log, skipped inside a training step that its loggers will not write (they write every
        trainer.log_every_n_steps): each call costs milliseconds of Python (Lightning moves its whole result
        collection), which on a GPU was a quarter of a supervised step; the values written are the same."""
        trainer = self._trainer
        if (trainer is not None and self._current_fx_name == "training_step"
                and not trainer._logger_connector.should_update_logs):
            return
        super().log(name, value, *args, **kwargs)

    # ---- training --------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        cache: dict = {"batch": batch}
        labeled = batch["labeled"]
        batch_size = labeled["image"].shape[0]
        loss_sup = self.supervised_loss(labeled, cache)
        loss = loss_sup
        loss_unsup = None if self.unsupervised_term_off() else self.unsupervised_loss(batch, cache)
        if loss_unsup is not None:
            weight = self.unsupervised_weight()
            loss = loss_sup + weight * loss_unsup
            self.log("train/loss_unsup", loss_unsup, batch_size=batch_size)
            self.log("train/unsup_weight", weight, batch_size=batch_size)
        self.log("train/loss_sup", loss_sup, batch_size=batch_size)
        self.log("train/loss", loss, batch_size=batch_size)  # on the bar too (StepProgressBar), not prog_bar
        return loss

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return self.optimizer_with_schedule(params)

    def optimizer_with_schedule(self, params) -> dict:
        """The protocol's optimizer (optim.name: AdamW, or SGD with momentum) over ``params`` with its per-step
        schedule, as Lightning takes it."""
        o = self.cfg.optim
        if o.name == "sgd":
            optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.lr_schedule(optimizer), "interval": "step"}}

    def lr_schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """Linear warm-up, then poly / cosine / constant / step decay over trainer.max_steps (optim section)."""
        o, total = self.cfg.optim, self.cfg.trainer.max_steps
        factor = partial(learning_rate_factor, total_steps=total, warmup_steps=o.warmup_steps, schedule=o.schedule,
                         poly_power=o.poly_power, step_fraction=o.step_fraction, step_gamma=o.step_gamma)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # ---- inference -------------------------------------------------------------------------------
    def predict_logits(self, net: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """Whole-volume logits (1, C, *volume) by sliding-window inference with the training patch.

        In 2D mode the volume's slices along ``data.slice_axis`` form the batch, so 2D methods are
        evaluated on the same 3D volumes and metrics as 3D ones.
        """
        e, roi = self.cfg.eval, list(self.cfg.data.patch_size)
        overlap = window_overlap(roi, e.sw_stride) if e.sw_stride is not None else e.sw_overlap
        if self.cfg.data.spatial_dims == 3:
            return sliding_window_inference(image, roi, e.sw_batch_size, net, overlap=overlap)
        axis = 2 + self.cfg.data.slice_axis
        slices = image.movedim(axis, 0).squeeze(1)
        logits = sliding_window_inference(slices, roi, e.sw_batch_size, net, overlap=overlap)
        return logits.unsqueeze(1).movedim(0, axis)

    def predict_labels(self, model_name: str, image: torch.Tensor) -> torch.Tensor:
        return self.decode(self.predict_logits(self.evaluation_networks()[model_name], image))

    # ---- evaluation (validation: Dice for model selection; test: Dice and HD95) ---------------------
    def _store(self, key: str) -> CatMetric:
        # CatMetric gathers rows from every DDP rank, so metrics are over cases, never averaged per rank.
        if key not in self._stores:
            self._stores[key] = CatMetric(nan_strategy="disable").to(self.device)
        return self._stores[key]

    def evaluate_batch(self, stage: str, batch, with_hd: bool, models: Optional[Sequence[str]] = None) -> dict:
        """Scores one whole case with each evaluated network (or those named in ``models``) into ``stage``'s stores;
        returns the predictions."""
        image, label = batch["image"], batch["label"]
        spacing = batch["spacing"][0].tolist()
        outputs = {}
        for name in models or self.evaluation_networks():
            pred = self.predict_labels(name, image)[0]
            m = case_metrics(pred.cpu(), label[0, 0].cpu(), self.num_classes, spacing,
                             self.cfg.eval.hd_percentile, with_hd=with_hd)
            values = [float(batch["case_index"][0])] + [v for metric in m.values() for v in metric]
            self._scored_with_hd[stage] = with_hd
            self._store(f"{stage}/{name}").update(torch.tensor([values], dtype=torch.float64, device=self.device))
            outputs[name] = pred
        return outputs

    def collect_rows(self, stage: str, models: Optional[Sequence[str]] = None) -> Dict[str, List[dict]]:
        """Per model (each evaluated network, or those in ``models``), one row per case scored into ``stage``'s stores
        since the last call, in case order, gathered from every DDP rank (duplicates from sampler padding removed).
        Every rank must call it (a collective under DDP)."""
        k = len(self.foreground)
        out = {}
        for name in models or self.evaluation_networks():
            store = self._store(f"{stage}/{name}")
            names = scored_metrics(k) if self._scored_with_hd.get(stage) else VALIDATION_METRICS
            width = 1 + len(names) * k
            values = store.compute().reshape(-1, width).cpu().tolist() if store.update_count else []
            store.reset()
            rows, seen = [], set()
            for v in sorted(values, key=lambda r: r[0]):
                idx = int(v[0])
                if idx not in seen:
                    seen.add(idx)
                    metrics = {n: v[1 + i * k:1 + (i + 1) * k] for i, n in enumerate(names)}
                    metrics.setdefault("hd95", [float("nan")] * k)
                    rows.append(case_row(self.case_ids[idx], metrics, self.foreground))
            out[name] = rows
        return out

    def validation_step(self, batch, batch_idx):
        preds = self.evaluate_batch("val", batch, with_hd=False)
        if batch_idx < self.cfg.logging.n_images:
            primary = self.cfg.method.primary_model
            return {"image": batch["image"], "label": batch["label"], "pred": preds[primary]}
        return None

    def on_validation_epoch_end(self):
        for name, rows in self.collect_rows("val").items():
            prefix = "val" if name == self.cfg.method.primary_model else f"val_{name}"
            self.log(f"{prefix}/dice_mean", nanmean(r["dice_mean"] for r in rows), sync_dist=True,
                     prog_bar=prefix == "val")
            for cls in self.foreground:
                self.log(f"{prefix}/dice_{cls}", nanmean(r[f"dice_{cls}"] for r in rows), sync_dist=True)

    def on_test_epoch_start(self):
        self.test_rows = []

    def test_step(self, batch, batch_idx):
        self.evaluate_batch("test", batch, with_hd=True)

    def on_test_epoch_end(self):
        for name, rows in self.collect_rows("test").items():
            self.test_rows += [{"checkpoint": self.checkpoint_tag, "model": name, **r} for r in rows]

