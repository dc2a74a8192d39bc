import json
import subprocess
import sys
import shutil
import urllib.error

import pytest

from ssl_bench.cli import build_parser, main, parse_with_overrides
from ssl_bench.config import PROJECT_ROOT, load_config
from ssl_bench.data.download import DownloadError, download_msd
from ssl_bench.registry import method_names


def test_methods_lists_every_registered_name(capsys):
    assert main(["methods"]) == 0
    assert capsys.readouterr().out.split() == method_names()


def test_download_offline_says_how_to_point_at_a_copy(tmp_path, monkeypatch):
    import monai.apps

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(monai.apps, "download_and_extract", offline)
    with pytest.raises(DownloadError) as err:
        download_msd("hippocampus", tmp_path)
    message = str(err.value)
    assert "Task04_Hippocampus" in message and "SSL_BENCH_DATA_ROOT" in message and "data.root" in message
    assert main(["data", "download", "hippocampus", "--root", str(tmp_path)]) == 2


def test_download_skips_an_existing_copy(tmp_path, capsys):
    (tmp_path / "Task04_Hippocampus").mkdir()
    (tmp_path / "Task04_Hippocampus" / "dataset.json").write_text("{}")
    assert download_msd("hippocampus", tmp_path) == tmp_path / "Task04_Hippocampus"
    assert "already exists" in capsys.readouterr().out


def test_verify_and_import_msd_commands(tmp_path, synthetic_cache, capsys):
    args = ["data", "verify", "--data", "synthetic", f"data.cache_dir={synthetic_cache}",
            "data.synthetic.shape=[20,20,20]", "data.synthetic.n_cases=12"]
    assert main(args) == 0
    assert "12 cases OK" in capsys.readouterr().out

    ds = tmp_path / "Task09_Toy"
    training = [{"image": f"imagesTr/t{i}.nii.gz", "label": f"labelsTr/t{i}.nii.gz"} for i in range(10)]
    for path in (ds / p for entry in training for p in entry.values()):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()  # import-msd checks that every listed file is there; `data verify` reads them
    (ds / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "spleen"}, "training": training}))
    out, data_config = tmp_path / "toy.json", tmp_path / "experiments" / "data" / "toy.yaml"
    assert main(["data", "import-msd", str(ds), "--out", str(out), "--data-config", str(data_config)]) == 0
    assert json.loads(out.read_text())["labels"] == ["background", "spleen"]
    assert "each image is its own patient" in capsys.readouterr().out
    # the data config makes `--data toy` work right after the import
    shutil.copytree(PROJECT_ROOT / "experiments" / "method", data_config.parents[1] / "method")
    (data_config.parents[1] / "base.yaml").write_text("{}\n")
    cfg = load_config("supervised", "toy", experiments_dir=data_config.parents[1])
    assert cfg.data.name == "toy" and cfg.data.manifest == str(out)
    out.write_text("{}")
    assert main(["data", "import-msd", str(ds), "--out", str(out), "--data-config", str(data_config)]) == 1
    assert out.read_text() == "{}"  # never overwrites silently
    assert main(["data", "import-msd", str(tmp_path / "absent")]) == 2


def test_overrides_may_stand_on_both_sides_of_an_option():
    # Regression: `diagnose RUN --batches 2 method.lambda_max=1` was "unrecognized arguments".
    parser = build_parser()
    args = parse_with_overrides(parser, ["diagnose", "RUN", "a.b=1", "--batches", "2", "c.d=3"])
    assert (args.run_dir, args.batches, args.overrides) == ("RUN", 2, ["a.b=1", "c.d=3"])
    args = parse_with_overrides(parser, ["train", "--method", "pi_model", "x=1", "--force", "y=2"])
    assert (args.method, args.force, args.overrides) == ("pi_model", True, ["x=1", "y=2"])


@pytest.mark.parametrize("argv", [["train", "--no-such-option"], ["train", "a=1", "--force", "stray"],
                                  ["methods", "a=1"]])
def test_stray_arguments_are_still_refused(argv, capsys):
    with pytest.raises(SystemExit) as err:
        parse_with_overrides(build_parser(), argv)
    assert err.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["train"], ["data", "verify"]])
def test_a_data_root_given_for_generated_data_is_an_error(command, tmp_path, synthetic_cache, capsys):
    """data.root on synthetic data was silently ignored (it is generated into data.cache_dir)."""
    args = [*command, "--data", "synthetic", f"data.root={tmp_path / 'mine'}", f"data.cache_dir={synthetic_cache}",
            "data.synthetic.shape=[20,20,20]", "data.synthetic.n_cases=12"]
    if command == ["train"]:
        args += [f"run.runs_dir={tmp_path / 'runs'}", "trainer.max_steps=1", "logging.wandb=false",
                 "trainer.enable_progress_bar=false"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"data.root={tmp_path / 'mine'}: 'synthetic' is generated" in err and "data.cache_dir" in err
    assert not (tmp_path / "runs").exists()


def test_the_command_line_parses_its_arguments_without_loading_torch():
    # `ssl-bench --help` and a typo's usage error came after torch and MONAI loaded (seconds), because main()
    # imported every module whose error it explains; it now catches ExplainedError, which those errors derive from.
    probe = ("import sys\nfrom ssl_bench.cli import main\n"
             "for argv in (['--help'], ['train', '--help'], ['no-such-command']):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'monai', 'lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _error_classes():
    from ssl_bench.config import ConfigError
    from ssl_bench.data.manifest import ManifestError
    from ssl_bench.data.verify import DataVerificationError, Problem
    from ssl_bench.evidence.bundle import BundleError
    from ssl_bench.predict import PredictError
    from ssl_bench.registry import UnknownMethodError
    from ssl_bench.report import ReportError
    from ssl_bench.run.resume import CheckpointError
    from ssl_bench.run.run_lock import RunFolderBusy
    verification = DataVerificationError([Problem("case_1", "image.nii.gz", "NaN in the image")], "la")
    return [ConfigError("bad key x"), ManifestError("bad manifest m.json"), verification, BundleError("bad part"),
            PredictError("no checkpoint"), UnknownMethodError("unknown method 'mean_techer'"),
            ReportError("nothing to report"), CheckpointError("unreadable last.ckpt"), RunFolderBusy("runs/x busy"),
            DownloadError("offline")]


@pytest.mark.parametrize("error", _error_classes(), ids=lambda e: type(e).__name__)
def test_every_explained_error_is_printed_in_one_line_with_exit_status_2(error, monkeypatch, capsys):
    from ssl_bench import cli

    def fail(args):
        raise error

    monkeypatch.setattr(cli, "_cmd_methods", fail)
    assert main(["methods"]) == cli.ERROR_EXIT_CODE == 2
    assert capsys.readouterr().err.startswith(f"ssl-bench: error: {error}")
