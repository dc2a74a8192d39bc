"""smiler: SMILE with curriculum relabeling (Petit et al. 2018, "SMILEr"), as docs/methods.md ("smile and
smiler") defines it.

Plain SMILE for the first method.smile_phase_fraction of trainer.max_steps; then R rounds start evenly
spaced over the rest of the same budget. At the start of round t the current network predicts every
labeled training volume whole (sliding window, eval mode); for each case and each organ missing in it,
the top γ_t = (t/R)·γ_max of its predicted positives (sigmoid > threshold) among the ambiguous voxels
become positive pseudo-labels (weight 1), replacing the previous round's (relabel_top_fraction in
ssl_bench/losses/partial_label.py). Training continues on them until the next round.

Pseudo-labels live in the module, per labeled case as a (K, voxels) bool volume, and go into checkpoints,
so a resumed run keeps them. Random patches find their voxels through ``voxel_index`` (each voxel's flat
index in its volume), which the data pipeline crops, pads, flips and slices with the label
(ssl_bench/data/partial.py). Each round logs relabel/{round,gamma,voxels,precision} and per organ, where
precision is measured against the untouched label (the removed truth, known because removal is simulated);
run_records() puts the rounds into the run folder as relabeling.json.

method.relabel_criterion=mc_dropout relabels the γ_t least variable positives over MC-dropout passes instead
(docs/methods.md), drawn from a generator seeded by the run's seed and the round, apart from the training's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from ssl_bench.config import AT_LEAST_ONE, BELOW_ONE, Range, need, run_seed
from ssl_bench.data.stream import stream_seed
from ssl_bench.losses.partial_label import (mc_dropout_scores, pseudo_labels_at, relabel_missing_organs,
                                             relabel_record, relabel_round_steps)
from ssl_bench.methods.smile import Smile, SmileConfig
from ssl_bench.nets.backbone import dropout_sampling
from ssl_bench.registry import register_method

RELABEL_CRITERIA = ("score", "mc_dropout")


@dataclass
class SmilerConfig(SmileConfig):
    """SMILEr (Petit et al. 2018): SMILE, then R curriculum relabeling rounds with γ_t = (t/R)·γ_max."""
    # R and γ_max of Petit et al. 2018.
    relabel_rounds: int = 3
    gamma_max: float = 1.0
    # Plain SMILE for this fraction of trainer.max_steps; the R rounds then start evenly spaced over the rest,
    # so SMILEr has the same total budget as every method. Petit et al. train SMILE first, then relabel.
    smile_phase_fraction: float = 0.5
    # Which predicted positives are relabeled: score, the top γ_t by score (Petit et al. 2018); mc_dropout, the γ_t
    # with the lowest variance over mc_samples MC-dropout passes (Gal & Ghahramani 2016; the uncertainty criterion
    # of Petit et al.'s perspectives), with the backbone's model.dropout as the rate.
    relabel_criterion: str = "score"
    # MC-dropout passes per volume and round (K = 8, as ua_mt's and co_training's MC passes here).
    mc_samples: int = 8

    def validate(self, cfg) -> None:
        super().validate(cfg)
        self.check(AT_LEAST_ONE, "relabel_rounds")
        self.check(Range(lambda v: 0 < v <= 1, "must be in (0, 1]"), "gamma_max")
        self.check(BELOW_ONE, "smile_phase_fraction")
        need(self.relabel_criterion in RELABEL_CRITERIA, "method.relabel_criterion",
             f"must be one of {', '.join(RELABEL_CRITERIA)}, got '{self.relabel_criterion}'")
        if self.relabel_criterion == "mc_dropout":
            self.check(Range(lambda v: v >= 2, "must be >= 2 (a variance over passes)"), "mc_samples")
            need(cfg.model.dropout > 0, "model.dropout", "method.relabel_criterion=mc_dropout samples the backbone's "
                 "dropout (Gal & Ghahramani 2016): set model.dropout > 0 (the protocol's backbone has 0.1)")


@register_method("smiler")
class Smiler(Smile):
    plot_colour = "#bcbd22"
    config_class = SmilerConfig
    uses_voxel_index = True

    def __init__(self, cfg, class_names, case_ids):
        super().__init__(cfg, class_names, case_ids)
        self.pseudo: Dict[int, torch.Tensor] = {}  # case index -> (K, voxels) bool
        self.rounds_done = 0
        self.relabel_history: List[dict] = []

    def round_start_steps(self) -> List[int]:
        m = self.cfg.method
        return relabel_round_steps(self.cfg.trainer.max_steps, m.smile_phase_fraction, m.relabel_rounds)

    def on_train_batch_start(self, batch, batch_idx):
        due = sum(step <= self.global_step for step in self.round_start_steps())
        if due > self.rounds_done:  # rounds sharing a step (tiny budgets): the latest one
            self.relabel(due)

    def pseudo_positives(self, labeled) -> Optional[torch.Tensor]:
        if not self.pseudo:
            return None
        index = labeled["voxel_index"][:, 0]
        if next(iter(self.pseudo.values())).device != index.device:  # restored from a checkpoint on the CPU: move once
            self.pseudo = {case: volume.to(index.device) for case, volume in self.pseudo.items()}
        return pseudo_labels_at(index, [self.pseudo.get(int(c)) for c in labeled["case_index"].tolist()], self.n_organs)

    @torch.no_grad()
    def relabel(self, round_t: int) -> dict:
        m = self.cfg.method
        gamma = round_t / m.relabel_rounds * m.gamma_max
        was_training = self.net.training
        self.net.eval()
        pseudo, voxels, correct = {}, [0] * self.n_organs, [0] * self.n_organs
        for volume in self.trainer.datamodule.labeled_volumes_loader():
            scores, ranking = self.relabel_scores(volume["image"].to(self.device), round_t)
            relabeled, case_voxels, case_correct = relabel_missing_organs(
                scores, volume["label"][0, 0].to(self.device), volume["label_full"][0, 0].to(self.device),
                (~volume["annotated"][0]).nonzero().flatten().tolist(), gamma, m.threshold, ranking)
            voxels = [a + b for a, b in zip(voxels, case_voxels)]
            correct = [a + b for a, b in zip(correct, case_correct)]
            pseudo[int(volume["case_index"][0])] = relabeled.flatten(1)
        self.net.train(was_training)
        self.pseudo, self.rounds_done = pseudo, round_t
        record, metrics = relabel_record(round_t, int(self.global_step), gamma, self.foreground, voxels, correct)
        self.relabel_history.append(record)
        # Straight to the loggers: self.log would keep a round's values only on a log_every_n_steps step.
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)
        return record

    def relabel_scores(self, image: torch.Tensor, round_t: int):
        """(scores, ranking), (K, *volume) each, of a whole labeled volume in eval mode: the sigmoid ranked by itself
        (None), or the MC-dropout mean ranked by minus its variance (method.relabel_criterion)."""
        m = self.cfg.method
        if m.relabel_criterion == "score":
            return self.predict_logits(self.net, image)[0].sigmoid(), None
        with dropout_sampling(self.net, stream_seed(run_seed(self.cfg), f"smiler-mc-dropout-round{round_t}")):
            samples = torch.stack([self.predict_logits(self.net, image)[0].sigmoid() for _ in range(m.mc_samples)])
        mean, variance = mc_dropout_scores(samples)
        return mean, -variance

    def run_records(self):
        return {"relabeling.json": self.relabel_history}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["smiler"] = {"rounds_done": self.rounds_done, "history": self.relabel_history,
                                "pseudo": {case: v.cpu() for case, v in self.pseudo.items()}}

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("smiler", {})
        self.rounds_done = state.get("rounds_done", 0)
        self.relabel_history = list(state.get("history", []))
        self.pseudo = dict(state.get("pseudo", {}))
