"""The ``ssl-bench`` command line."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

from ssl_bench.config import LoggingConfig, RunConfig
from ssl_bench.data.manifest import DATA_ROOT_ENV
from ssl_bench.utils.errors import ExplainedError


# The exit status of every command that stops on an error it explains (a config, data, checkpoint or report error, a
# run folder in use): bad data is 2 in `ssl-bench data verify` and `ssl-bench train` alike, as argparse's usage errors.
ERROR_EXIT_CODE = 2
EXIT_STATUS = ("exit status: 0 done; 2 an error it explains (bad config or data, e.g. a file that `ssl-bench data "
               "verify` rejects, an unreadable checkpoint, a run folder in use); 143 / 130 a run stopped by SIGTERM / "
               "Ctrl-C, its state saved (the same command resumes it); 1 a sweep with failed cells, an import that "
               "would overwrite files")


# Each handler imports its command's modules when the command runs (main() those of the errors it reports), so that
# a command does not load what only other commands use (the sweeps, the tools, the data imports).
def _cmd_train(args) -> int:
    from ssl_bench.config import load_config
    from ssl_bench.run.callbacks import RunStopped
    from ssl_bench.run.train import train
    cfg = load_config(args.method, args.data, args.overrides)
    try:
        train(cfg, force=args.force, resume_from=args.resume_from)
    except RunStopped as stopped:  # stopped by SIGTERM or Ctrl-C, its state saved: neither finished nor failed
        return stopped.code
    return 0


def _cmd_sweep(args) -> int:
    from ssl_bench.sweep import describe_cells, load_sweep, run_sweep
    sweep = load_sweep(Path(args.sweep_file), args.overrides, Path(args.records) if args.records else None,
                       force=args.force, jobs=args.jobs, only=args.only or ())
    if args.dry_run:
        print(describe_cells(sweep))
        return 0
    return run_sweep(sweep)


def _cmd_report(args) -> int:
    from ssl_bench.report import ReportWarning, build_summary, write_report_files
    from ssl_bench.report.writer import SWEEPS_DIR, default_out
    project = None if args.no_wandb else args.wandb_project
    out = Path(args.out) if args.out else default_out(Path(args.runs_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReportWarning)  # printed below, after the report
        summary = build_summary(Path(args.runs_dir), out, records=not args.no_records,
                                sweeps_dir=Path(args.sweeps_dir) if args.sweeps_dir else SWEEPS_DIR)
    paths = write_report_files(summary, out, wandb_project=project, wandb_entity=args.wandb_entity)
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    for skipped in summary.loaded.skipped:
        print(f"ssl-bench report: warning: left out {skipped.describe()}", file=sys.stderr)
    for sweep in summary.coverage:
        if sweep.missing:
            print(f"ssl-bench report: warning: sweep {sweep.name}: {len(sweep.missing)} of {sweep.n_cells} cells have no "
                  f"result ({', '.join(c.description for c in sweep.missing[:3])}"
                  f"{', ...' if len(sweep.missing) > 3 else ''}; all listed under \"Missing cells\" in {paths['markdown']})",
                  file=sys.stderr)
    return 0


def _cmd_diagnose(args) -> int:
    from ssl_bench.tools.diagnostics import diagnose, format_balance
    run = Path(args.run_dir)
    print(format_balance(run, diagnose(run, args.batches, args.overrides)))
    return 0


def _cmd_predict(args) -> int:
    from ssl_bench.predict import predict
    predict(Path(args.run_dir), [Path(i) for i in args.images], Path(args.out), checkpoint=args.checkpoint,
            model=args.model, device=args.device, overwrite=args.overwrite)
    return 0


def _cmd_methods(args) -> int:
    from ssl_bench.registry import method_names
    print("\n".join(method_names()))
    return 0


def _cmd_import_msd(args) -> int:
    from ssl_bench.data.manifest import import_msd
    manifest = import_msd(args.dataset_dir, name=args.name, test_fraction=args.test_fraction,
                          val_fraction=args.val_fraction, seed=args.seed, patient_regex=args.patient_regex,
                          patient_field=args.patient_field)
    comment = f"Imported by `ssl-bench data import-msd`; the data root is the folder that holds {manifest.directory}/."
    return _write_import(args, manifest, {}, comment, Path(args.dataset_dir).resolve().parent)


def _cmd_import_ssl4mis(args) -> int:
    from ssl_bench.data.import_outputs import SSL4MIS_DATA_SETTINGS, ssl4mis_comment
    from ssl_bench.data.ssl4mis import convert_ssl4mis, ssl4mis_manifest
    root = _import_root(args, "import-ssl4mis")
    manifest = ssl4mis_manifest(args.dataset_dir, name=args.name, patient_pattern=args.patient_regex)
    return _write_import(args, manifest, SSL4MIS_DATA_SETTINGS, ssl4mis_comment(manifest), root,
                         convert=lambda: convert_ssl4mis(args.dataset_dir, manifest, root))


def _cmd_import_uamt(args) -> int:
    from ssl_bench.data.import_outputs import uamt_comment, uamt_data_settings
    from ssl_bench.data.uamt import convert_uamt, uamt_manifest
    root = _import_root(args, "import-uamt")
    manifest = uamt_manifest(args.dataset_dir, name=args.name, val_cases=args.val_cases, seed=args.seed,
                             downsample=args.downsample, spacing=args.spacing)
    settings, top = uamt_data_settings(manifest)
    return _write_import(args, manifest, settings, uamt_comment(manifest), root, top=top,
                         convert=lambda: convert_uamt(args.dataset_dir, manifest, root, downsample=args.downsample))


def _import_root(args, command: str) -> Path:
    """The data root an import converts into: --root, else the first folder of $SSL_BENCH_DATA_ROOT."""
    from ssl_bench.config import ConfigError, data_roots
    roots = [Path(args.root)] if args.root else data_roots("")
    if not roots:
        raise ConfigError(f"{command} converts the volumes into a data root: pass --root DIR or set {DATA_ROOT_ENV}")
    return roots[0].resolve()


def _write_import(args, manifest, settings: dict, comment: str, data_root: Path, convert=None,
                  top: Optional[dict] = None) -> int:
    """Writes the manifest and experiments/data/<name>.yaml (neither replacing other content without --overwrite),
    after ``convert`` (the files' conversion, if the import has one), which runs only once both may be written."""
    from ssl_bench.data.import_outputs import conflicts, data_config_text, default_paths, write_outputs
    paths = default_paths(manifest.name)
    manifest_path = Path(args.out or paths["manifest"])
    config_path = Path(args.data_config or paths["data_config"])
    outputs = {manifest_path: manifest.to_json(),
               config_path: data_config_text(manifest, manifest_path, settings, comment, top)}
    taken = conflicts(outputs, args.overwrite)
    if taken:
        print("\n".join(taken), file=sys.stderr)
        return 1
    if convert is not None:
        print(f"converted {len(manifest.cases)} volumes into {convert()}")
    write_outputs(outputs)
    n_patients = len(set(manifest.patient_of.values()))
    print(f"wrote {manifest_path}: {len(manifest.cases)} cases of {n_patients} patients, {len(manifest.test)} test, "
          f"{len(manifest.validation)} validation, {len(manifest.pool)} in the training pool (split by patient); "
          f"labels {', '.join(manifest.labels)}")
    if n_patients == len(manifest.cases) and hasattr(args, "patient_regex"):  # an import that can group images
        print("each image is its own patient: if a patient has several images, import again with --patient-regex "
              "(e.g. 'patient\\d+') so that they stay in one set")
    print(f"wrote {config_path}: train with --data {manifest.name} (set {DATA_ROOT_ENV}={data_root})")
    return 0


def _cmd_download(args) -> int:
    from ssl_bench.data.download import download_msd
    download_msd(args.dataset, Path(args.root))
    return 0


def _cmd_verify(args) -> int:
    from ssl_bench.config import load_config
    from ssl_bench.data.dataset import resolve_dataset
    from ssl_bench.data.verify import describe_verification, verify_cases
    overrides = list(args.overrides)
    if args.root:
        overrides.append(f"data.root={args.root}")
    cfg = load_config("supervised", args.data, overrides)
    manifest, root = resolve_dataset(cfg)
    infos, problems = verify_cases(manifest, root)
    print(f"{manifest.name} ({manifest.dataset_dir(root)}): {describe_verification(infos, problems)}")
    return ERROR_EXIT_CODE if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-bench", description="Fair benchmark of semi-supervised "
                                     "medical image segmentation methods.", epilog=EXIT_STATUS)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train and evaluate one method at one labeled fraction and draw")
    p.add_argument("--method", default="supervised", help="registered method name (see `ssl-bench methods`)")
    p.add_argument("--data", default="hippocampus", help="a dataset name, experiments/data/<name>.yaml (hippocampus, "
                   "la_half, synthetic, synthetic_multiorgan, ...), or the path of a data YAML")
    p.add_argument("--force", action="store_true", help="start over even if the run folder holds a finished run")
    p.add_argument("--resume-from", metavar="CKPT", help="when last.ckpt cannot be read: resume from 'newest' (the "
                   "newest intact checkpoint of the run) or from one of the run's checkpoints, e.g. its best-<step>.ckpt")
    p.add_argument("overrides", nargs="*", help="config overrides as key=value, e.g. data.fraction=0.1 "
                   "trainer.max_steps=200 optim.lr=3e-4")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sweep", help="run every cell (method x fraction x draw ...) of a sweep file; resumable")
    p.add_argument("sweep_file", help="experiments/sweeps/<name>.yaml")
    p.add_argument("--dry-run", action="store_true", help="list the cells, finished or pending, and run nothing")
    p.add_argument("--force", action="store_true", help="start every cell over, whatever its run folder holds")
    p.add_argument("--jobs", type=int, metavar="N", help="cells at once on this machine (overrides the file's local.jobs; "
                   "they share its CPU threads and GPUs)")
    p.add_argument("--only", nargs="+", metavar="KEY=VALUE", help="run only the cells that match, e.g. --only "
                   "method=cps fraction=0.1 draw=0 (keys: method, fraction, n_labeled, labeled_selection, draw, the "
                   "sweep's axes and its extra cells' settings, by each cell's config; a key given twice matches "
                   "either value)")
    p.add_argument("--records", metavar="DIR", help="count a cell as finished when DIR (e.g. results/records, kept "
                   "by `ssl-bench report`) holds a result of the same config, even if its run folder is gone; "
                   "and copy each cell's result there as soon as it finishes")
    p.add_argument("overrides", nargs="*", help="config overrides for every cell, after the file's, e.g. "
                   "run.runs_dir=/scratch/runs")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="summary table, statistics and plot of every finished run")
    p.add_argument("runs_dir", nargs="?", default=RunConfig().runs_dir,
                   help="folder holding the run folders (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: RUNS_DIR/report, so that a report of your "
                   "own runs leaves the committed results/ alone; for a records folder such as results/records, the "
                   "folder that holds it: `ssl-bench report results/records` rebuilds results/)")
    p.add_argument("--wandb-project", default=LoggingConfig().wandb_project,
                   help="W&B project of the report runs, one per dataset (default: %(default)s, the training runs')")
    p.add_argument("--wandb-entity", default=LoggingConfig().wandb_entity or os.environ.get("WANDB_ENTITY"),
                   help="W&B entity, to link the report's rows to the training runs' groups (default: $WANDB_ENTITY)")
    p.add_argument("--no-wandb", action="store_true", help="do not log the report to W&B")
    p.add_argument("--sweeps-dir", default=None, help="where the sweep files of the runs' `sweep=<name>` tags are, "
                   "to list their missing cells (default: the project's experiments/sweeps)")
    p.add_argument("--no-records", action="store_true",
                   help="report only the run folders under runs_dir: neither read nor update OUT/records")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("diagnose", help="gradient of a run's unsupervised term against its supervised loss")
    p.add_argument("run_dir", help="a run folder (runs/<dataset>/<method>/frac<f>/draw<d>)")
    p.add_argument("--batches", type=int, default=8, help="training batches to average over (default: %(default)s)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. method.lambda_max=1.0")
    p.set_defaults(func=_cmd_diagnose)

    p = sub.add_parser("predict", help="segment NIfTI images with a trained run: label maps on each image's grid")
    p.add_argument("run_dir", help="a run folder (runs/<dataset>/<method>/frac<f>/draw<d>)")
    p.add_argument("images", nargs="+", help="NIfTI images (.nii or .nii.gz), 3D, one channel")
    p.add_argument("--out", required=True, help="output folder; each label map is named as its image (.nii.gz)")
    p.add_argument("--checkpoint", default="last", help="last (the run's primary result), best (best on "
                   "validation) or a checkpoint file (default: %(default)s)")
    p.add_argument("--model", default=None, help="which evaluated network (default: the run's primary one, "
                   "method.primary_model, e.g. Mean Teacher's teacher)")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:1, ... "
                   "(default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace label maps already in --out")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("methods", help="list the registered methods, one per line")
    p.set_defaults(func=_cmd_methods)

    evidence = sub.add_parser("evidence", help="GPU windows that add up: run a budgeted, resumable queue of cells "
                              "(run), land a window's records (land), prepare what travels (carry)")
    evidence.add_argument("evidence_command", choices=sorted(EVIDENCE_COMMANDS),
                          help="each has its own --help: ssl-bench evidence run --help")

    data = sub.add_parser("data", help="dataset manifests, download and integrity checks")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("import-msd", help="write a manifest and experiments/data/<name>.yaml from an MSD-style "
                        "dataset.json")
    p.add_argument("dataset_dir")
    p.add_argument("--name", default=None)
    p.add_argument("--out", default=None, help="manifest path (default data_manifests/<name>.json)")
    p.add_argument("--data-config", default=None, help="data config path (default experiments/data/<name>.yaml)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="of the patients (default: %(default)s)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="of the patients (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patient-regex", default=None, help="the patient id in each image's file name, e.g. "
                   "'patient\\d+', so that a patient's images stay in one set (default: each training entry's "
                   "--patient-field, else each image is its own patient)")
    p.add_argument("--patient-field", default="patient", help="the training entries' key holding the patient id "
                   "(default: %(default)s)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_import_msd)
    p = dsub.add_parser("import-ssl4mis", help="convert an SSL4MIS dataset folder (data/*.h5, train/val/test lists; "
                        "e.g. its ACDC) into NIfTI under the data root, with a manifest of its split")
    p.add_argument("dataset_dir", help="the folder holding data/ and train.list (or train_slices.list), val.list, "
                   "test.list")
    p.add_argument("--name", default="acdc")
    p.add_argument("--root", default=None, help=f"data root to convert into (default ${DATA_ROOT_ENV})")
    p.add_argument("--out", default=None, help="manifest path (default data_manifests/<name>.json)")
    p.add_argument("--data-config", default=None, help="data config path (default experiments/data/<name>.yaml)")
    p.add_argument("--patient-regex", default=r"patient\d+", help="the patient id in each volume name "
                   "(default: %(default)s)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_import_ssl4mis)
    p = dsub.add_parser("import-uamt", help="convert the Left Atrium folder in UA-MT's layout (2018LA_Seg_Training "
                        "Set/<case>/mri_norm2.h5, train.list, test.list) into NIfTI under the data root, with a "
                        "manifest of the papers' split")
    p.add_argument("dataset_dir", help="the folder holding '2018LA_Seg_Training Set/', train.list and test.list")
    p.add_argument("--name", default="la", help="dataset name: data_manifests/<name>.json, experiments/data/<name>.yaml, "
                   "<data root>/<name>/ (default: %(default)s)")
    p.add_argument("--root", default=None, help=f"data root to convert into (default: the first folder of "
                   f"${DATA_ROOT_ENV})")
    p.add_argument("--out", default=None, help="manifest path (default data_manifests/<name>.json)")
    p.add_argument("--data-config", default=None, help="data config path (default experiments/data/<name>.yaml)")
    p.add_argument("--downsample", type=int, default=1, help="integer factor: 2 turns the full-resolution folder "
                   "(0.625 mm) into the half-resolution copy (1.25 mm) (default: %(default)s)")
    p.add_argument("--spacing", type=float, default=None, help="voxel side in mm of the files as they are (default: "
                   "from their depth, 88 slices 0.625 mm, 44 slices 1.25 mm)")
    p.add_argument("--val-cases", type=int, default=8, help="validation cases, drawn from train.list after its "
                   "first 16 (the papers' labeled sets) (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation draw (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_import_uamt)
    p = dsub.add_parser("download", help="download a public MSD dataset and check its hash")
    p.add_argument("dataset", choices=["hippocampus"])
    p.add_argument("--root", default=os.environ.get(DATA_ROOT_ENV, "data"), help=f"data root (default "
                   f"${DATA_ROOT_ENV} or ./data)")
    p.set_defaults(func=_cmd_download)
    p = dsub.add_parser("verify", help="check every case of a dataset; exits 2 on any problem, as `ssl-bench train` "
                        "does on the same bad file", description="Checks every case of a dataset (files load, shapes "
                        "and affines agree, labels within the declared ones, no NaN, sane spacing) and lists every "
                        "problem. Exit status: 0 all cases OK, 2 any problem (as `ssl-bench train` on bad data).")
    p.add_argument("--data", default="hippocampus")
    p.add_argument("--root", default=None, help=f"data root (default data.root or ${DATA_ROOT_ENV})")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_cmd_verify)
    return parser


def parse_with_overrides(parser: argparse.ArgumentParser, argv: Optional[List[str]]) -> argparse.Namespace:
    """Parse, letting key=value overrides stand on both sides of options (``train a=1 --force b=2``):
    argparse gives a positional list only the run of arguments before the first option."""
    args, rest = parser.parse_known_args(argv)
    if rest:
        if not hasattr(args, "overrides") or any(r.startswith("-") or "=" not in r for r in rest):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.overrides = list(args.overrides) + rest
    return args


# `ssl-bench evidence <command> ...`: each command parses its own arguments (ssl_bench/evidence).
EVIDENCE_COMMANDS = {"run": "ssl_bench.evidence.window", "land": "ssl_bench.evidence.land",
                     "carry": "ssl_bench.evidence.carry"}


def _cmd_evidence(argv: List[str]) -> int:
    module = importlib.import_module(EVIDENCE_COMMANDS[argv[0]])
    return module.main(argv[1:])


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    evidence = argv[:1] == ["evidence"] and argv[1:2] and argv[1] in EVIDENCE_COMMANDS
    args = None if evidence else parse_with_overrides(build_parser(), argv)
    try:
        return _cmd_evidence(argv[1:]) if evidence else args.func(args)
    except ExplainedError as err:  # a config, data, checkpoint, report or bundle error, a run folder in use
        print(f"ssl-bench: error: {err}", file=sys.stderr)
        return ERROR_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
