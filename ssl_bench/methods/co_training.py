"""co_training: uncertainty-aware multi-view co-training (UMCT, Xia et al. 2020), as docs/methods.md
("co_training") defines it.

V views of each image by cyclic permutation of its spatial axes (3D: three orientations; 2D: the transpose;
ssl_bench/utils/views.py), one network per view from the shared backbone factory, each wrapped to take and
give tensors in the common orientation (ssl_bench/nets/multiview.py). Supervised: DiceCE of every view on
the labeled images, averaged over views. Unsupervised: each view makes K MC-dropout passes over the
unlabeled images (its one pass with gradients, detached, plus K - 1 without); its mean p̄_v and confidence
w_v = 1 / predictive variance per voxel give view v the pseudo-label Σ_{j≠v} w_j p̄_j / Σ_{j≠v} w_j, and the
loss is the mean over views of the soft CE(pred_v, pseudo_{-v}) (ssl_bench/losses/co_training.py), weighted
by the protocol's λ(t). MC dropout needs model.dropout > 0 (checked by the config; the protocol's backbone has it).
Inference ensembles the views (mean softmax, the primary model "ensemble"); each view is evaluated too.

Cost, reported not hidden: a step runs V networks, each L + U images with gradients and (K - 1)·U without,
so it costs about V supervised steps plus V·(K - 1)·U forwards (make perf prints it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ssl_bench.config import AT_LEAST_ONE, POSITIVE, need
from ssl_bench.losses.co_training import leave_one_out_pseudo_labels, mc_mean_and_confidence, soft_cross_entropy
from ssl_bench.methods.base import SegmentationMethod
from ssl_bench.methods.base_config import SemiSupervisedConfig
from ssl_bench.nets.multiview import OrientedNetwork, ViewEnsemble
from ssl_bench.registry import register_method
from ssl_bench.utils.views import view_permutations


@dataclass
class CoTrainingConfig(SemiSupervisedConfig):
    """Uncertainty-aware multi-view co-training (UMCT, Xia et al. 2020), with the protocol's λ(t) ramp."""
    # Views = cyclic permutations of the spatial axes; None: one per spatial axis (3D: 3, 2D: 2), as UMCT.
    views: Optional[int] = None
    # MC-dropout passes per view for the confidence (UMCT: Bayesian via MC dropout; K = 8 as UA-MT here).
    mc_passes: int = 8
    # Keeps the confidence 1/(variance + ε) finite where all passes agree exactly.
    variance_epsilon: float = 1e-6

    def validate(self, cfg) -> None:
        super().validate(cfg)
        self.check(AT_LEAST_ONE, "mc_passes")
        self.check(POSITIVE, "variance_epsilon")
        dims = cfg.data.spatial_dims
        if self.views is not None:
            need(2 <= self.views <= dims, "method.views",
                 f"must be in [2, data.spatial_dims={dims}], got {self.views}")
        need(self.mc_passes == 1 or cfg.model.dropout > 0, "model.dropout",
             "co_training's confidence is MC dropout (Xia et al. 2020): with method.mc_passes > 1 set "
             "model.dropout > 0 (the protocol's backbone has 0.1), or method.mc_passes=1 for an unweighted average "
             "of views")


@register_method("co_training")
class CoTraining(SegmentationMethod):
    plot_colour = "#9467bd"
    config_class = CoTrainingConfig
    uses_unlabeled = True

    @classmethod
    def supervised_passes(cls, cfg):
        views = cfg.method.views or cfg.data.spatial_dims
        return {f"view{k}": [cfg.data.labeled_batch_size] for k in range(views)}

    @classmethod
    def unsupervised_passes(cls, cfg, step):
        unlabeled, more = cfg.data.unlabeled_batch_size, cfg.method.mc_passes - 1
        return {view: [unlabeled] + ([more * unlabeled] if more else []) for view in cls.supervised_passes(cfg)}

    def build_network(self) -> ViewEnsemble:
        dims = self.cfg.data.spatial_dims
        permutations = view_permutations(dims, self.cfg.method.views or dims)
        build_backbone = super().build_network  # the shared factory, called once per view
        return ViewEnsemble([OrientedNetwork(build_backbone(), p) for p in permutations])

    def view_networks(self):
        return {f"view{k}": view for k, view in enumerate(self.net.views)}

    def evaluation_networks(self):
        return {"ensemble": self.net, **self.view_networks()}

    def training_networks(self):
        return self.view_networks()

    def supervised_loss(self, labeled, cache):
        losses = [self.dice_ce(view(labeled["image"]), labeled["label"]) for view in self.net.views]
        return torch.stack(losses).mean()

    def mc_passes(self, view, images: torch.Tensor):
        """The view's logits with gradients, and K softmax samples: those logits detached and K - 1 more passes."""
        passes = self.cfg.method.mc_passes
        logits = view(images)
        samples = [logits.detach().softmax(dim=1)]
        if passes > 1:
            with torch.no_grad():
                samples += view(torch.cat([images] * (passes - 1))).softmax(dim=1).chunk(passes - 1)
        return logits, torch.stack(samples)

    def unsupervised_loss(self, batch, cache):
        # A plain tensor: chunking MONAI MetaTensors trips over their per-sample metadata.
        images = batch["unlabeled"]["image"].as_subclass(torch.Tensor)
        logits, means, confidences = [], [], []
        for view in self.net.views:
            view_logits, samples = self.mc_passes(view, images)
            mean, confidence = mc_mean_and_confidence(samples, self.cfg.method.variance_epsilon)
            logits.append(view_logits)
            means.append(mean)
            confidences.append(confidence)
        targets = leave_one_out_pseudo_labels(torch.stack(means), torch.stack(confidences))
        self.log("train/mean_confidence", torch.stack(confidences).mean(), batch_size=images.shape[0])
        return torch.stack([soft_cross_entropy(lg, t) for lg, t in zip(logits, targets)]).mean()
