"""Results: tables, statistics, figures and a W&B report built from every finished run folder and record.

``ssl-bench report [runs_dir] --out results`` reads every ``metrics.json`` under ``runs_dir`` (a run is finished
exactly when it has one), its ``per_case.csv`` and ``config.yaml``, and the records kept in ``<out>/records``;
there is no other state. It writes into ``out``:

- ``summary.md``: per dataset, the methods table (method × labeled fraction: Dice ± SD over draws, difference
  from supervised with the pooled paired Wilcoxon p, step cost relative to supervised, trained parameters), the
  same for ablations and controls, cost, every group with intervals and per-class Dice, the test-selection
  audit, each run pair's test, the noise floor and the replicates; then partial-annotation tables, where each run
  ran, the missing cells of the sweeps covered and the files left out;
- ``summary.csv``: one row per run;
- the figures of ssl_bench.report.plots;
- with a W&B project, one report run per dataset (ssl_bench.report.wandb_report).

The pieces, each usable and tested alone:

- ``runs``: reading run folders and records (unreadable files named and skipped), and keeping a records copy of
  each (ssl_bench.records, the layer below the report and the sweeps: keep_record, the record files, provenance);
- ``stats``: estimates, the paired Wilcoxon test, pooled SDs, the smallest detectable effect;
- ``groups``: runs per (dataset, method, fraction) against their supervised reference, cost per method;
- ``noise_floor``: replicates (training seeds, hardware) and the noise floor per fraction;
- ``numeric_settings``: a method's runs in another numeric setting (trainer.precision) against its runs in the
  protocol's;
- ``coverage``: the missing cells of the sweeps the runs belong to;
- ``summary``: all of it computed once; ``tables``, ``plots``, ``wandb_report``: its outputs;
- ``writer``: the command.
"""

from ssl_bench.records import CONFIG_FILE, METRICS_FILE, PER_CASE_FILE, RECORD_FILES, RECORDS_DIR, keep_record
from ssl_bench.report.groups import (AlphaGroup, Group, RunPair, paired_test, protocol_differences, summarize_alpha,
                                     summarize_groups)
from ssl_bench.report.noise_floor import NoiseFloor, Replicate, ReplicateSet, noise_floor, summarize_replicates
from ssl_bench.report.runs import (REFERENCE_METHOD, LoadedRuns, ReportError, ReportWarning, Run, alpha_line, load_runs,
                                   read_runs)
from ssl_bench.report.stats import Estimate, PairedTest, estimate
from ssl_bench.report.writer import build_summary, write_report, write_report_files

__all__ = [
    "AlphaGroup", "CONFIG_FILE", "Estimate", "Group", "LoadedRuns", "METRICS_FILE", "NoiseFloor", "PER_CASE_FILE",
    "PairedTest", "RECORDS_DIR", "RECORD_FILES", "REFERENCE_METHOD", "Replicate", "ReplicateSet", "ReportError",
    "ReportWarning", "Run", "RunPair", "alpha_line", "build_summary", "estimate", "keep_record", "load_runs",
    "noise_floor", "paired_test", "protocol_differences", "read_runs", "summarize_alpha", "summarize_groups",
    "summarize_replicates", "write_report", "write_report_files",
]
