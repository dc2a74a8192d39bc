"""cps: cross pseudo supervision (Chen et al., CVPR 2021), as docs/methods.md ("cps") defines it.

Two networks f1, f2 of the shared backbone, built one after the other from the seeded generator, so their
initialisations differ and a run's seed fixes both. Supervised: DiceCE of each on the labeled images, averaged
(per network 0.5·DiceCE, SSL4MIS's 0.5·(CE + Dice)). Unsupervised: hard pseudo-labels Y = argmax p, no gradient
through them; L_cps = CE(p1, Y2) + CE(p2, Y1) on the unlabeled images plus the same on the labeled ones
(method.on_labeled, as the paper), weighted by the protocol's λ(t) with SSL4MIS's λ_max = 0.1 ramped over the run.

Evaluated: each network alone (``net1``, the primary result, and ``net2``) and their ``ensemble`` (mean softmax),
which is compared only with the two-network supervised control, `cps` with method.lambda_max=0 (the base then
skips the unlabeled passes; experiments/sweeps/cps_ensemble.yaml).

Forwards per step, each network: L labeled images (the supervised pass, reused by L_cps^l) and U unlabeled, all
with gradients; twice a supervised step's L plus 2U. The control runs the L passes only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_bench.losses.pseudo_label import cross_pseudo_supervision
from ssl_bench.methods.base import SegmentationMethod
from ssl_bench.methods.base_config import SemiSupervisedConfig
from ssl_bench.nets.multiview import ViewEnsemble
from ssl_bench.registry import register_method


@dataclass
class CPSConfig(SemiSupervisedConfig):
    """Cross pseudo supervision (Chen et al., CVPR 2021): two networks, each trained on the other's hard
    pseudo-labels, L = L_sup + λ(t)·L_cps, with SSL4MIS's medical weight and ramp as docs/methods.md ("cps") says."""
    # SSL4MIS (train_cross_pseudo_supervision_2D.py / _3D.py): consistency 0.1 with the sigmoid ramp over 200 "epochs"
    # of 150 iterations, i.e. over its whole 30000-iteration run. Chen et al.'s code (TorchSemiSeg): a constant
    # λ = 1.5 on PASCAL VOC and 6 on Cityscapes.
    lambda_max: float = 0.1
    rampup_fraction: float = 1.0
    # L_cps on the labeled images too, L_cps = L_cps^l + L_cps^u (Chen et al. 2021; docs/methods.md); SSL4MIS applies it
    # to the unlabeled images only (false).
    on_labeled: bool = True


@register_method("cps")
class CrossPseudoSupervision(SegmentationMethod):
    plot_colour = "#7f7f7f"
    config_class = CPSConfig
    uses_unlabeled = True

    @classmethod
    def supervised_passes(cls, cfg):
        return {"net1": [cfg.data.labeled_batch_size], "net2": [cfg.data.labeled_batch_size]}

    @classmethod
    def unsupervised_passes(cls, cfg, step):
        return {"net1": [cfg.data.unlabeled_batch_size], "net2": [cfg.data.unlabeled_batch_size]}

    def __init__(self, cfg, class_names, case_ids):
        super().__init__(cfg, class_names, case_ids)
        # The second network's draws follow the first's in the seeded generator: a different initialisation.
        # model.init_from (if set) is loaded into the first only, so the two still start apart.
        self.net2 = self.build_network()
        # Mean softmax of the two, for evaluation only (it holds no weights of its own).
        self._ensemble = [ViewEnsemble([self.net, self.net2])]

    def networks(self):
        return {"net1": self.net, "net2": self.net2}

    def evaluation_networks(self):
        return {**self.networks(), "ensemble": self._ensemble[0]}

    def training_networks(self):
        return self.networks()

    def supervised_loss(self, labeled, cache):
        logits = [net(labeled["image"]) for net in (self.net, self.net2)]
        cache["labeled_logits_pair"] = logits
        return torch.stack([self.dice_ce(lg, labeled["label"]) for lg in logits]).mean()

    def unsupervised_loss(self, batch, cache):
        images = batch["unlabeled"]["image"]
        loss = cross_pseudo_supervision(self.net(images), self.net2(images))
        if self.cfg.method.on_labeled:
            loss = loss + cross_pseudo_supervision(*cache["labeled_logits_pair"])
        return loss
