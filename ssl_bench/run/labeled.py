"""A run's labeled amount, worded once for every place that names it.

The amount is a fraction of the training pool's patients (``data.fraction``) or a number of them (``data.n_labeled``),
chosen as ``data.labeled_selection`` says (ssl_bench/data/splits.py). It names the run folder
(``frac0.1``, ``labeled4-first``: existing run folders and records rely on these names, byte for byte), the W&B run
(its name also in the report's rows) and its tags, the header and result table a run prints, and a sweep's cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

# How the labeled patients were chosen, as a run's header and result table say it (nothing for a seeded draw).
SELECTION_WORDS = {"draw": "", "first": "the first listed",
                   "first_then_draw": "the first listed at draw 0, drawn at later draws"}


@dataclass(frozen=True)
class LabeledAmount:
    fraction: Optional[float]  # None: n_labeled patients are labeled
    n_labeled: Optional[int] = None
    selection: str = "draw"

    @classmethod
    def of(cls, data) -> "LabeledAmount":
        """The amount of a config's ``data`` section."""
        return cls(data.fraction, data.n_labeled, data.labeled_selection)

    @classmethod
    def of_metrics(cls, metrics: dict) -> "LabeledAmount":
        """The amount of a run's metrics.json (one written before data.n_labeled existed is a fraction's)."""
        n_labeled = metrics.get("n_labeled_patients_asked")
        return cls(metrics.get("fraction") if n_labeled is None else None, n_labeled,
                   metrics.get("labeled_selection") or "draw")

    def _with_selection(self, amount: str) -> str:
        return amount + ("" if self.selection == "draw" else f"-{self.selection}")

    @property
    def folder(self) -> str:
        """The run folder's name for it: frac<f> (Python's float repr: frac0.1, frac1.0) or labeled<n>, with
        -<selection> unless drawn."""
        return self._with_selection(f"frac{float(self.fraction)}" if self.n_labeled is None
                                    else f"labeled{self.n_labeled}")

    @property
    def short(self) -> str:
        """Its part of the W&B run's name: frac<f> (frac0.1, frac1) or labeled<n>, with -<selection> unless drawn."""
        return self._with_selection(f"frac{float(self.fraction):g}" if self.n_labeled is None
                                    else f"labeled{self.n_labeled}")

    @property
    def tags(self) -> List[str]:
        """Its W&B tags: frac=<f> or n_labeled=<n>, and labeled_selection=<selection> unless drawn."""
        amount = f"frac={float(self.fraction):g}" if self.n_labeled is None else f"n_labeled={self.n_labeled}"
        return [amount] + ([] if self.selection == "draw" else [f"labeled_selection={self.selection}"])

    @property
    def words(self) -> str:
        """As a run's header and result table say it: "fraction 0.1", "4 labeled patients (the first listed)"."""
        amount = f"fraction {float(self.fraction):g}" if self.n_labeled is None else f"{self.n_labeled} labeled patients"
        how = SELECTION_WORDS.get(self.selection, self.selection)
        return amount + (f" ({how})" if how else "")

    @property
    def assignments(self) -> str:
        """As a sweep's selection keys say it (``--only``): "fraction=0.1", "n_labeled=4 labeled_selection=first"."""
        amount = f"fraction={float(self.fraction):g}" if self.n_labeled is None else f"n_labeled={self.n_labeled}"
        return amount + ("" if self.selection == "draw" else f" labeled_selection={self.selection}")


def wandb_run_name(method: str, amount: LabeledAmount, draw: int) -> str:
    """A training run's W&B name, <method>-<amount>-draw<d> (mean_teacher-frac0.1-draw0), as the run sets it
    (ssl_bench/run/wandb_logging.py) and the report links its rows to it (ssl_bench/report/wandb_report.py)."""
    return f"{method}-{amount.short}-draw{draw}"
