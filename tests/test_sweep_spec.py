"""The sweep file and its cells (ssl_bench/sweep/spec.py): grid, validation, folders, the cells' states (finished,
recorded, refused, pending) and the --only selection."""

import functools
import json
from pathlib import Path

import pytest
import yaml

from ssl_bench.cli import main
from ssl_bench.config import ConfigError, to_yaml
from ssl_bench.registry import method_names
from ssl_bench.run.paths import run_dir
from ssl_bench.sweep import Cell, SweepError, load_sweep, run_sweep
from sweep_helpers import SWEEPS, one_thread_per_process, record, writes_metrics, write_sweep  # noqa: F401 (autouse)


@functools.lru_cache(maxsize=None)
def _shipped_sweep(path: Path):
    """A shipped sweep file's cells (not what ./runs holds), loaded once for the tests that only read them (a large
    sweep loads in seconds)."""
    return load_sweep(path, states=False)


def test_hippocampus_sweep_is_every_semi_supervised_method_by_fraction_by_draw_plus_full_supervision():
    sweep = _shipped_sweep(SWEEPS / "hippocampus.yaml")
    # Registered methods for full annotations (smile, smiler and marginal have their partial-annotation sweeps), among
    # them every method
    # the hippocampus records hold: the sweep reproduces the benchmark's results, and a new method joins it once it
    # is run there (its file and YAML alone make it no cell of the benchmark).
    methods = list(dict.fromkeys(c.method for c in sweep.cells))
    records = Path(__file__).resolve().parents[1] / "results" / "records" / "hippocampus"
    recorded = {p.name for p in records.iterdir() if "-" not in p.name}  # the runs without a variant's tag
    assert recorded <= set(methods) <= set(method_names()) - {"smile", "smiler", "marginal"}
    expected = {(m, f, d) for m in methods for f in (0.05, 0.1, 0.2) for d in (0, 1, 2)}
    expected |= {("supervised", 1.0, d) for d in (0, 1, 2)}
    cells = [(c.method, c.fraction, c.draw) for c in sweep.cells]
    assert len(cells) == len(expected) and set(cells) == expected
    assert len({c.run_dir for c in sweep.cells}) == len(cells)
    assert [c.draw for c in sweep.cells] == sorted(c.draw for c in sweep.cells)  # draw by draw
    cfg = sweep.cells[0].config()
    assert (cfg.data.name, cfg.data.fraction, cfg.data.draw) == ("hippocampus", 0.05, 0)
    assert sweep.config.name == "hippocampus" and sweep.config.launcher == "local"

def test_la_sweep_is_the_issue_grid_with_extra_cells_by_number_of_labeled_cases():
    sweep = _shipped_sweep(SWEEPS / "la.yaml")
    cells = {(c.method, c.n_labeled if c.n_labeled is not None else c.fraction, c.draw, c.settings)
             for c in sweep.cells}
    methods = ["supervised", "mean_teacher", "ua_mt", "unimatch", "bcp", "cps"]
    expected = {(m, n, d, ()) for m in methods for n in (4, 8) for d in (0, 1)}
    expected |= {(m, 16, d, ()) for m in ("supervised", "ua_mt") for d in (0, 1)}
    expected |= {("supervised", 1.0, d, ()) for d in (0, 1)}
    # the noise floor's replicates: supervised again with another training seed at the methods' labeled amounts
    expected |= {("supervised", n, d, (("trainer.seed", 100),)) for n in (4, 8) for d in (0, 1)}
    # the controls of cps (two networks without cross pseudo-labels) and bcp (its labeled stage throughout)
    expected |= {(m, n, d, (setting,)) for m, setting in (("cps", ("method.lambda_max", 0.0)),
                                                          ("bcp", ("method.unlabeled_stage", False)))
                 for n in (4, 8) for d in (0, 1)}
    assert cells == expected and len(sweep.cells) == len(expected)
    replicate = next(c for c in sweep.cells if c.settings).config()
    assert (replicate.trainer.seed, replicate.run.tag) == (100, "seed100")
    folders = {c.run_dir.parts[-3] for c in sweep.cells}  # the controls' folders, as the hippocampus records name them
    assert {"supervised-seed100", "cps-lambda_max0.0", "bcp-unlabeled_stageFalse"} <= folders
    assert {c.labeled_selection for c in sweep.cells} == {"first_then_draw"}
    cfg = next(c for c in sweep.cells if c.method == "ua_mt" and c.n_labeled == 16).config()
    assert (cfg.protocol, cfg.data.n_labeled, cfg.data.labeled_selection) == ("la_cpu", 16, "first_then_draw")


def test_an_extra_cell_gives_one_labeled_amount(tmp_path):
    path = write_sweep(tmp_path / "both.yaml", draws=[0],
                       extra_cells=[{"method": "supervised", "fraction": 0.5, "n_labeled": 2}])
    with pytest.raises(SweepError, match="extra_cells\\[0\\]: give one of fraction and n_labeled"):
        load_sweep(path, states=False)


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_loads_and_each_cell_config_resolves(path):
    sweep = _shipped_sweep(path)
    assert sweep.cells and sweep.config.name == path.stem  # `make sweep SWEEP=<name>` finds it by that name
    assert len({cell.run_dir for cell in sweep.cells}) == len(sweep.cells)
    for cell in sweep.cells:
        cfg = cell.config()  # typed schema: an unknown or mistyped key fails here
        assert (cfg.method.name, cfg.data.fraction, cfg.data.draw) == (cell.method, cell.fraction, cell.draw)
        assert (cfg.data.n_labeled, cfg.data.labeled_selection) == (cell.n_labeled, cell.labeled_selection)

def test_the_acdc_sweep_is_methods_by_labeled_patients_by_selection_by_draw_with_ssl4mis_protocol():
    sweep = _shipped_sweep(SWEEPS / "acdc.yaml")
    methods = ["supervised", "mean_teacher", "ua_mt", "cps", "unimatch", "bcp"]
    expected = {(m, n, s, d) for m in methods for n in (3, 7) for s in ("draw", "first") for d in (0, 1, 2)}
    cells = [(c.method, c.n_labeled, c.labeled_selection, c.draw) for c in sweep.cells if c.n_labeled]
    assert len(cells) == len(expected) and set(cells) == expected
    assert {(c.method, c.fraction) for c in sweep.cells if not c.n_labeled} == {("supervised", 1.0)}  # all 70
    assert len({c.run_dir for c in sweep.cells}) == len(sweep.cells) == 75
    cfg = next(c for c in sweep.cells if c.labeled_selection == "first").config()
    assert cfg.protocol == "ssl4mis" and cfg.trainer.max_steps == 30000 and cfg.data.fraction is None
    assert str(run_dir(cfg)) == "runs/acdc-ssl4mis/supervised/labeled3-first/draw0"
    assert "n_labeled=3 labeled_selection=first draw=0" in sweep.cells[12].describe()
    # --only by the number of labeled patients and the selection
    assert {(c.n_labeled, c.labeled_selection) for c in load_sweep(SWEEPS / "acdc.yaml", only=[
        "n_labeled=7", "labeled_selection=first", "method=cps"], states=False).cells} == {(7, "first")}


def test_extra_axis_cells_get_their_own_run_folders(tmp_path):
    path = write_sweep(tmp_path / "lr.yaml", draws=[0, 1], axes={"optim.lr": [0.001, 0.002]},
                        extra_cells=[{"method": "supervised", "fraction": 1.0},
                                     {"method": "supervised", "fraction": 0.5}],  # already in the grid: once
                        overrides=["run.tag=v"])
    sweep = load_sweep(path, ["run.runs_dir=elsewhere"])
    assert len(sweep.cells) == 2 * 2 * 2  # draws x lr x (grid cell + the 100% cell)
    for cell in sweep.cells:
        cfg = cell.config()
        lr = dict(cell.axis_values)["optim.lr"]
        assert cfg.optim.lr == lr and cfg.run.tag == f"v-lr{lr}"
        assert list(cfg.logging.tags) == ["sweep=lr"]  # the sweep id, as a W&B tag of every cell
        assert cell.run_dir == Path("elsewhere", "synthetic", f"supervised-v-lr{lr}", f"frac{cell.fraction}",
                                    f"draw{cell.draw}")
    assert "optim.lr=0.001" in sweep.cells[0].describe()

def test_an_extra_cell_with_settings_is_a_tagged_variant_crossed_with_every_draw_and_axis(tmp_path):
    variant = {"method": "smiler", "fraction": 0.5, "settings": {"method.relabel_criterion": "mc_dropout"}}
    path = write_sweep(tmp_path / "variant.yaml", methods=["supervised", "smiler"], draws=[0, 1],
                       axes={"data.partial.alpha": [0.5]}, extra_cells=[variant])
    cells = load_sweep(path, states=False).cells
    assert [(c.method, c.draw, c.run_dir.parts[-3]) for c in cells] == [
        (method, draw, folder) for draw in (0, 1) for method, folder in (
            ("supervised", "supervised-alpha0.5"), ("smiler", "smiler-alpha0.5"),
            ("smiler", "smiler-relabel_criterionmc_dropout-alpha0.5"))]
    criteria = [c.config().method.relabel_criterion for c in cells if c.method == "smiler"]
    assert criteria == ["score", "mc_dropout"] * 2  # the setting reaches that cell alone
    assert "method.relabel_criterion=mc_dropout data.partial.alpha=0.5" in cells[2].describe()


@pytest.mark.parametrize("name, alphas", [("smile_organs", (0.0, 0.3, 0.5, 0.7, 0.9)),
                                          ("smile_hippocampus", (0.0, 0.5, 0.7))])
def test_the_partial_annotation_sweeps_cross_methods_alphas_and_training_seeds_on_one_draw(name, alphas):
    sweep = _shipped_sweep(SWEEPS / f"{name}.yaml")
    variants = ["supervised", "smile", "smiler", "marginal", "smiler-relabel_criterionmc_dropout"]
    # smiler at alpha 0 repeats smile (nothing to relabel): skip_cells leaves both smiler variants out there
    expected = {(f"{v}-alpha{a}-seed{s}", a, s) for v in variants for a in alphas for s in (0, 1, 2)
                if not (v.startswith("smiler") and a == 0.0)}
    # (every cell's config is resolved by test_every_shipped_sweep_loads_and_each_cell_config_resolves)
    cells = [(c.run_dir.parts[-3], dict(c.axis_values)["data.partial.alpha"], dict(c.axis_values)["trainer.seed"])
             for c in sweep.cells]
    assert len(cells) == len(expected) and set(cells) == expected
    assert {(c.fraction, c.draw) for c in sweep.cells} == {(1.0, 0)}  # every case labeled, the split (and flags) fixed


def test_skip_cells_leave_out_the_cells_that_match_all_their_keys(tmp_path):
    path = write_sweep(tmp_path / "skip.yaml", methods=["supervised", "mean_teacher"], draws=[0, 1],
                       axes={"optim.lr": [0.1, 0.2]}, skip_cells=[{"method": "mean_teacher", "optim.lr": 0.1}],
                       extra_cells=[{"method": "mean_teacher", "fraction": 1.0}])
    cells = {(c.method, c.fraction, c.draw, dict(c.axis_values)["optim.lr"])
             for c in load_sweep(path, states=False).cells}
    expected = {(m, 0.5, d, lr) for m in ("supervised", "mean_teacher") for d in (0, 1) for lr in (0.1, 0.2)}
    expected |= {("mean_teacher", 1.0, d, lr) for d in (0, 1) for lr in (0.1, 0.2)}  # the extra cells as well
    assert cells == {c for c in expected if not (c[0] == "mean_teacher" and c[3] == 0.1)}


@pytest.mark.parametrize("spec, key, message", [
    ({"fractoins": [0.1]}, "fractoins", "not in 'SweepConfig'"),
    ({"methods": ["supervised", "no_such_method"]}, "methods", "unknown method 'no_such_method'"),
    ({"fractions": [0.0]}, "fractions", "must be in (0, 1]"),
    ({"extra_cells": [{"method": "supervised", "fraction": 1.5}]}, "extra_cells[0].fraction", "must be in (0, 1]"),
    ({"launcher": "kubernetes"}, "launcher", "must be one of local, slurm"),
    ({"local": {"jobs": 0}}, "local.jobs", "must be >= 1"),
    ({"axes": {"optim.lrr": [1.0]}}, "optim.lrr", "not in 'OptimConfig'"),
    ({"overrides": ["data.fraction=0.2"]}, "overrides", "sets a key the grid sets"),
    ({"overrides": ["data.n_labeled=3"]}, "overrides", "sets a key the grid sets"),
    ({"fractions": [], "n_labeled": [0]}, "n_labeled", "must be >= 1"),
    ({"labeled_selections": ["random"]}, "labeled_selections", "must list some of draw, first, first_then_draw"),
    ({"fractions": [], "n_labeled": [2], "methods": ["nope"]}, "methods", "unknown method 'nope'"),
    ({"extra_cells": [{"method": "supervised", "fraction": 1.0, "settings": {"data.draw": 1}}]},
     "extra_cells[0].settings", "is set by the grid"),
    ({"extra_cells": [{"method": "supervised", "fraction": 1.0, "settings": {"method.gamma_max": 0.5}}]},
     "method.gamma_max", "not in 'MethodConfig'"),
    ({"skip_cells": [{"methd": "supervised"}]}, "skip_cells[0]", "must give some of method"),
    ({"skip_cells": [{"method": "smile"}]}, "skip_cells[0].method", "'smile' is none of the sweep's methods"),
    ({"axes": {"optim.lr": [0.1]}, "skip_cells": [{"optim.lr": 0.2}]}, "skip_cells[0].optim.lr",
     "0.2 is none of the axis's values [0.1]"),
])
def test_invalid_sweep_files_name_the_file_and_key(tmp_path, spec, key, message):
    path = write_sweep(tmp_path / "bad.yaml", **spec)
    with pytest.raises(ConfigError) as err:  # SweepError is one; schema errors come from the config merge
        load_sweep(path)
    assert str(path) in str(err.value) and key in str(err.value) and message in str(err.value)

def test_cells_recorded_with_the_same_config_count_as_finished_and_others_run(tmp_path, monkeypatch, capsys):
    path = write_sweep(tmp_path / "records.yaml", methods=["supervised", "mean_teacher", "pi_model"])
    runs, records = [f"run.runs_dir={tmp_path / 'runs'}"], tmp_path / "records"
    cells = load_sweep(path, runs).cells
    # Where a run was written and how it logged are no part of what it computed; a changed default is.
    same = record(records, cells[0], **{"run.runs_dir": "/elsewhere", "logging.tags": ["sweep=old"]})
    other = record(records, cells[1], **{"model.dropout": 0.0})

    assert main(["sweep", str(path), "--dry-run", "--records", str(records), *runs]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[1] for line in out.splitlines()] == ["recorded", "pending", "pending"]
    assert f"record {other} has another config (model.dropout differ): its cell will run" in err

    sweep = load_sweep(path, runs, records)
    assert [c.record for c in sweep.cells] == [same, None, None]
    ran = []
    monkeypatch.setattr(Cell, "command", writes_metrics(ran))
    assert run_sweep(sweep) == 0
    assert ran == ["mean_teacher", "pi_model"]
    out = capsys.readouterr().out
    assert "3 cells, 1 already finished (1 of them recorded only)" in out
    assert f"cell 1/3: method=supervised fraction=0.5 draw=0 (recorded in {same})" in out
    assert not (cells[0].run_dir / "metrics.json").exists()  # nothing was run or written for it
    # Each cell that ran is kept in the records as it finishes, replacing the record of another config (its
    # config.yaml too, which this stand-in run lacks); the record that stood in for its cell is untouched.
    assert [json.loads((records / c.relative_dir / "metrics.json").read_text()).get("ran") for c in cells] == [
        None, "mean_teacher", "pi_model"]
    assert (other / "config.yaml").read_text() == to_yaml(cells[1].run_config())

    ran.clear()  # without records, the recorded cell is pending again
    assert run_sweep(load_sweep(path, runs)) == 0 and ran == ["supervised"]
    with pytest.raises(SweepError, match="no records folder"):
        load_sweep(path, runs, tmp_path / "missing")

def test_a_cell_counts_as_finished_only_with_a_readable_result_of_its_own_config(tmp_path, monkeypatch, capsys):
    """A run folder whose metrics.json is cut short is no finished cell (its cell runs again, the file named); one
    holding a finished run of another config is refused with the differing keys, and --force starts it over; a
    runs folder named another way is the same runs folder."""
    path = write_sweep(tmp_path / "identity.yaml", methods=["supervised", "mean_teacher", "pi_model"])
    runs = [f"run.runs_dir={tmp_path / 'runs'}"]
    ran = []
    monkeypatch.setattr(Cell, "command", writes_metrics(ran))
    assert run_sweep(load_sweep(path, runs)) == 0 and len(ran) == 3
    truncated, changed, intact = (c.run_dir for c in load_sweep(path, runs).cells)
    (truncated / "metrics.json").write_text((truncated / "metrics.json").read_text()[:40])
    cfg = yaml.safe_load((changed / "config.yaml").read_text())
    cfg["optim"]["lr"] = 0.5
    (changed / "config.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()

    sweep = load_sweep(path, runs)
    assert [c.state() for c in sweep.cells] == ["pending", "refused", "finished"]
    assert f"[sweep] {truncated / 'metrics.json'}: not valid JSON" in capsys.readouterr().err
    ran.clear()
    assert run_sweep(sweep) == 1 and ran == ["supervised"]
    out, err = capsys.readouterr()
    assert "3 cells, 1 already finished, 1 refused" in out and "failed:" not in err
    assert (f"refused: method=mean_teacher fraction=0.5 draw=0: {changed} holds a run with a different config "
            "(optim.lr differ): use run.tag=<name> for a variant, or --force") in err

    # The same runs folder, relative from elsewhere: nothing to do but the refused cell.
    monkeypatch.chdir(tmp_path / "runs")
    assert [c.state() for c in load_sweep(path, ["run.runs_dir=../runs"]).cells] == ["finished", "refused", "finished"]
    ran.clear()
    assert run_sweep(load_sweep(path, ["run.runs_dir=../runs"], force=True)) == 0
    assert ran == ["supervised", "mean_teacher", "pi_model"]
    assert yaml.safe_load((changed / "config.yaml").read_text())["optim"]["lr"] != 0.5

def test_a_record_of_a_pretrained_method_counts_as_its_cell(tmp_path, capsys):
    """contrastive's saved config holds the init_from its pretraining stage filled in, which the cell's config
    lacks; the record still counts, wherever its runs_dir was, unless it started from another backbone."""
    from ssl_bench.run.pretrain import backbone_path
    path = write_sweep(tmp_path / "records.yaml", methods=["contrastive"], draws=[0, 1])
    runs, records = [f"run.runs_dir={tmp_path / 'runs'}"], tmp_path / "records"
    cells = load_sweep(path, runs).cells
    elsewhere = cells[0].config()
    elsewhere.run.runs_dir = "/elsewhere/runs"
    same = record(records, cells[0], **{"run.runs_dir": "/elsewhere/runs",
                                          "model.init_from": str(backbone_path(elsewhere))})
    other = record(records, cells[1], **{"model.init_from": "/my/backbone.pt"})
    assert [c.record for c in load_sweep(path, runs, records).cells] == [same, None]
    assert f"record {other} has another config (model.init_from differ)" in capsys.readouterr().err
    (other / "config.yaml").write_text("model: [\n")  # not YAML: unusable, not a crash
    assert [c.record for c in load_sweep(path, runs, records).cells] == [same, None]
    assert f"record {other} is unusable ({other / 'config.yaml'}: cannot parse YAML" in capsys.readouterr().err
    (other / "metrics.json").write_text('{"dataset": "synth')  # cut short: no record, whatever its config
    (other / "config.yaml").write_text((same / "config.yaml").read_text())
    assert [c.record for c in load_sweep(path, runs, records).cells] == [same, None]
    assert f"record {other} is unusable ({other / 'metrics.json'}: not valid JSON" in capsys.readouterr().err


def test_training_seed_replicates_are_cells_with_folders_of_their_own(tmp_path):
    sweep = _shipped_sweep(SWEEPS / "training_seed.yaml")
    assert [(c.config().trainer.seed, c.run_dir) for c in sweep.cells] == [
        (seed, Path("runs", "hippocampus", f"supervised-seed{seed}", "frac0.1", "draw1")) for seed in (100, 101)]
    path = write_sweep(tmp_path / "seeds.yaml", draws=[0, 1], axes={"trainer.seed": [0, 1, None]},
                       overrides=["run.tag=long"])
    cells = load_sweep(path).cells
    assert len({c.run_dir for c in cells}) == 6 and {c.run_dir.parts[-3] for c in cells} == {
        "supervised-long-seed0", "supervised-long-seed1", "supervised-long-seedNone"}
    assert [c.config().trainer.seed for c in cells[:3]] == [0, 1, None]  # None: the draw seeds the training


def test_only_keeps_the_cells_that_match_every_key(tmp_path):
    """`ssl-bench sweep FILE --only method=cps fraction=0.1 draw=0`: a subset of a shipped sweep without a file of
    its own; a key given twice matches either value; other key=value terms are config overrides as anywhere."""
    path = write_sweep(tmp_path / "grid.yaml", methods=["supervised", "mean_teacher"], fractions=[0.1, 0.5],
                       draws=[0, 1], axes={"trainer.seed": [100, 101]})

    def cells(*only):
        return [(c.method, c.fraction, c.draw, c.value("trainer.seed")) for c in load_sweep(path, only=only).cells]
    assert len(cells()) == 16
    assert cells("method=mean_teacher", "fraction=0.10", "draw=1") == [
        ("mean_teacher", 0.1, 1, 100), ("mean_teacher", 0.1, 1, 101)]
    assert cells("trainer.seed=101", "draw=0", "method=supervised", "method=mean_teacher", "fraction=0.5") == [
        ("supervised", 0.5, 0, 101), ("mean_teacher", 0.5, 0, 101)]
    [cell] = load_sweep(path, only=["method=supervised", "fraction=0.1", "draw=0", "trainer.seed=100",
                                    "optim.lr=0.5"]).cells
    assert cell.config().optim.lr == 0.5
    with pytest.raises(SweepError, match="no cell matches --only method=pi_model"):
        load_sweep(path, only=["method=pi_model"])
    with pytest.raises(ConfigError, match="methd"):  # not a cell key: an override, whose key is checked
        load_sweep(path, only=["methd=supervised"])


def test_only_selects_by_an_extra_cells_setting_with_every_cells_value_from_its_config():
    """`--only method=supervised draw=0 trainer.seed=100` on la.yaml: the two seed-100 replicates, where the seed was
    once an override that gave every selected cell seed 100; `trainer.seed=null` (the config's default: the draw
    seeds the training) is the grid beside them, and a method that has no such key matches no value of it."""
    def cells(*only):
        return [(c.method, c.n_labeled if c.n_labeled is not None else c.fraction, c.settings)
                for c in load_sweep(SWEEPS / "la.yaml", only=only, states=False).cells]
    assert cells("method=supervised", "draw=0", "trainer.seed=100") == [
        ("supervised", 4, (("trainer.seed", 100),)), ("supervised", 8, (("trainer.seed", 100),))]
    assert cells("method=supervised", "draw=0", "trainer.seed=null") == [
        ("supervised", 4, ()), ("supervised", 8, ()), ("supervised", 16, ()), ("supervised", 1.0, ())]
    assert cells("draw=1", "method.lambda_max=0.0") == [("cps", 4, (("method.lambda_max", 0.0),)),
                                                        ("cps", 8, (("method.lambda_max", 0.0),))]
    assert [c[0] for c in cells("draw=0", "n_labeled=4", "method.unlabeled_stage=true")] == ["bcp"]
    # Its config still says what the cell trains with.
    [cell] = load_sweep(SWEEPS / "la.yaml", only=["method=supervised", "draw=1", "n_labeled=8", "trainer.seed=100"],
                        states=False).cells
    assert cell.config().trainer.seed == 100


def test_jobs_sets_the_cells_at_once_of_a_local_sweep(tmp_path, capsys):
    path = write_sweep(tmp_path / "local.yaml", methods=["supervised", "mean_teacher"], local={"jobs": 1})
    assert load_sweep(path, jobs=4).config.local.jobs == 4
    with pytest.raises(ConfigError, match="local.jobs: must be >= 1"):
        load_sweep(path, jobs=0)
    with pytest.raises(SweepError, match="--jobs 2: .* has launcher 'slurm'"):
        load_sweep(write_sweep(tmp_path / "cluster.yaml", launcher="slurm"), jobs=2)
    # Through the command line, options and filters on both sides of the overrides.
    assert main(["sweep", str(path), "--dry-run", "--only", "method=mean_teacher", f"run.runs_dir={tmp_path}",
                 "--jobs", "2"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert line.startswith("1/1 pending  method=mean_teacher fraction=0.5 draw=0") and str(tmp_path) in line
