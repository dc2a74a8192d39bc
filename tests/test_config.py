import pytest
import torch
from omegaconf import OmegaConf

from ssl_bench.config import ConfigError, load_config
from ssl_bench.registry import UnknownMethodError, get_method, method_names, register_method
from ssl_bench.run.paths import run_dir
from conftest import PROJECT_ROOT


def test_defaults_merge_yaml_and_overrides():
    cfg = load_config("supervised", "synthetic", ["trainer.max_steps=7", "optim.lr=3e-4", "data.fraction=0.5"])
    assert cfg.trainer.max_steps == 7 and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.data.name == "synthetic" and list(cfg.data.patch_size) == [32, 32, 32]  # from data/synthetic.yaml
    assert cfg.method.name == "supervised"
    assert str(run_dir(cfg)) == "runs/synthetic/supervised/frac0.5/draw0"


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_config("supervised", "synthetic", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="method.lambda_max"):
        load_config("supervised", "synthetic", ["method.lambda_max=1"])  # supervised has no such field


def test_wrong_type_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        load_config("supervised", "synthetic", ["trainer.max_steps=many"])


@pytest.mark.parametrize("override, key", [
    ("data.fraction=0", "data.fraction"), ("data.fraction=1.5", "data.fraction"),
    ("data.spatial_dims=4", "data.spatial_dims"), ("optim.schedule=linear", "optim.schedule"),
    ("model.arch=resnet", "model.arch"), ("data.patch_size=[32,32]", "data.patch_size"),
])
def test_semantic_errors(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("supervised", "synthetic", [override])


def test_unknown_dataset_and_method():
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        load_config("supervised", "nope")
    with pytest.raises(UnknownMethodError, match="registered methods: .*supervised"):
        load_config("no_such_method")


def test_bad_yaml_file_names_the_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "method").mkdir()
    (tmp_path / "base.yaml").write_text("trainer:\n  max_stepz: 3\n")
    (tmp_path / "data" / "synthetic.yaml").write_text("{}")
    (tmp_path / "method" / "supervised.yaml").write_text("{}")
    with pytest.raises(ConfigError, match=r"base.yaml.*max_stepz"):
        load_config("supervised", "synthetic", experiments_dir=tmp_path)


def test_registry_names_and_duplicates():
    assert "supervised" in method_names()
    assert get_method("supervised").method_name == "supervised"
    with pytest.raises(ValueError, match="already registered"):
        @register_method("supervised")
        class Impostor:
            pass


def test_every_registered_method_has_its_yaml():
    for name in method_names():
        cfg = load_config(name, "synthetic")
        assert cfg.method.name == name
        assert OmegaConf.is_config(cfg)


@pytest.mark.parametrize("override, key", [
    ("method.ema_decay=1.0", "method.ema_decay"), ("method.mc_passes=0", "method.mc_passes"),
    ("method.threshold_start=1.5", "method.threshold_end"), ("method.rampup_fraction=2", "method.rampup_fraction"),
])
def test_method_hyperparameter_ranges(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config("ua_mt", "synthetic", [override])


def test_a_number_of_labeled_patients_replaces_the_fraction_and_names_its_own_folder():
    cfg = load_config("supervised", "synthetic", ["data.n_labeled=7"])
    assert cfg.data.n_labeled == 7 and cfg.data.fraction is None
    assert str(run_dir(cfg)) == "runs/synthetic/supervised/labeled7/draw0"
    first = load_config("supervised", "synthetic", ["data.n_labeled=3", "data.labeled_selection=first"])
    assert str(run_dir(first)) == "runs/synthetic/supervised/labeled3-first/draw0"
    # The later of the two wins, as later overrides do (`make bench FRAC=... ARGS="data.n_labeled=7"`).
    assert load_config("supervised", "synthetic", ["data.fraction=0.1", "data.n_labeled=7"]).data.fraction is None
    back = load_config("supervised", "synthetic", ["data.n_labeled=7", "data.fraction=0.2"])
    assert back.data.n_labeled is None and str(run_dir(back)).endswith("frac0.2/draw0")


def test_a_config_file_setting_both_labeled_amounts_is_an_error(tmp_path):
    import shutil
    experiments = tmp_path / "experiments"
    shutil.copytree(PROJECT_ROOT / "experiments", experiments)
    (experiments / "data" / "both.yaml").write_text("data:\n  name: both\n  fraction: 0.1\n  n_labeled: 3\n")
    with pytest.raises(ConfigError, match="both.yaml: sets both data.fraction and data.n_labeled"):
        load_config("supervised", "both", experiments_dir=experiments)
    (experiments / "data" / "count.yaml").write_text("data:\n  name: count\n  manifest: ''\n  n_labeled: 3\n")
    assert load_config("supervised", "count", experiments_dir=experiments).data.fraction is None
    assert load_config("supervised", "count", ["data.fraction=0.5"], experiments_dir=experiments).data.n_labeled is None


@pytest.mark.parametrize("override, message", [
    ("data.n_labeled=0", "data.n_labeled: must be >= 1"),
    ("data.labeled_selection=random", "data.labeled_selection: must be one of draw, first, first_then_draw"),
    ("data.fraction=null", "give exactly one of data.fraction and data.n_labeled")])
def test_bad_labeled_amounts_are_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("supervised", "synthetic", [override])


def test_the_ssl4mis_protocol_is_one_override_with_its_own_run_folders():
    cfg = load_config("mean_teacher", "acdc", ["protocol=ssl4mis", "data.n_labeled=7"])
    assert cfg.protocol == "ssl4mis" and cfg.data.spatial_dims == 2 and list(cfg.data.patch_size) == [256, 256]
    assert (cfg.data.labeled_batch_size, cfg.data.unlabeled_batch_size) == (12, 12)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.01, 0.9, 1e-4)
    assert (cfg.optim.schedule, cfg.optim.warmup_steps, cfg.trainer.max_steps) == ("poly", 0, 30000)
    assert cfg.model.arch == "basic_unet" and list(cfg.model.channels) == [16, 32, 64, 128, 256, 16]
    assert cfg.method.ema_decay == 0.99  # the method's own hyperparameters stay
    assert str(run_dir(cfg)) == "runs/acdc-ssl4mis/mean_teacher/labeled7/draw0"
    plain = load_config("mean_teacher", "acdc", ["data.n_labeled=7"])  # this project's protocol on ACDC's slices
    assert plain.protocol == "" and plain.optim.name == "adamw" and plain.trainer.max_steps == 2000
    assert str(run_dir(plain)) == "runs/acdc/mean_teacher/labeled7/draw0"
    assert load_config("supervised", "hippocampus").protocol == ""  # the hippocampus protocol as it is
    # later overrides still win over the preset
    assert load_config("supervised", "acdc", ["protocol=ssl4mis", "trainer.max_steps=10"]).trainer.max_steps == 10


def test_protocol_errors_name_the_file(tmp_path):
    import shutil
    with pytest.raises(ConfigError, match="unknown protocol 'nnunet'.*known: la_cpu, la_gpu, ssl4mis, uamt"):
        load_config("supervised", "acdc", ["protocol=nnunet"])
    experiments = tmp_path / "experiments"
    shutil.copytree(PROJECT_ROOT / "experiments", experiments)
    (experiments / "protocol" / "sneaky.yaml").write_text("data:\n  manifest: other.json\noptim:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="sneaky.yaml: a protocol may not set data.manifest"):
        load_config("supervised", "acdc", ["protocol=sneaky"], experiments_dir=experiments)


def test_optim_name_sgd_builds_ssl4mis_optimizer_and_schedule():
    cfg = load_config("supervised", "acdc", ["protocol=ssl4mis", "trainer.max_steps=100"])
    module = get_method("supervised")(cfg, class_names=["background", "rv", "myo", "lv"], case_ids=["a"])
    setup = module.configure_optimizers()
    optimizer, schedule = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.9, 1e-4)  # no warm-up: full lr at once
    for _ in range(50):
        optimizer.step()
        schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 50 / 100) ** 0.9)  # SSL4MIS's poly


def test_a_method_config_checks_its_own_ranges_through_load_config(tmp_path, monkeypatch):
    """A method's range checks live in its config's validate(), found through the registry's config_class: a new
    method brings its checks in its own file, and config.py names none of its fields."""
    import shutil
    from dataclasses import dataclass

    from ssl_bench import registry
    from ssl_bench.config import NON_NEGATIVE, MethodConfig
    from ssl_bench.methods.base import SegmentationMethod

    @dataclass
    class WarmthConfig(MethodConfig):
        warmth: float = 1.0

        def validate(self, cfg):
            super().validate(cfg)
            self.check(NON_NEGATIVE, "warmth")

    class Warm(SegmentationMethod):
        config_class = WarmthConfig

    registry.method_names()  # the real methods first, so that the discovery does not run inside the patch
    monkeypatch.setitem(registry._METHODS, "warm", Warm)
    experiments = tmp_path / "experiments"
    shutil.copytree(PROJECT_ROOT / "experiments", experiments)
    (experiments / "method" / "warm.yaml").write_text("method:\n  name: warm\n")
    assert load_config("warm", "synthetic", experiments_dir=experiments).method.warmth == 1.0
    with pytest.raises(ConfigError, match=r"method.warmth: must be >= 0, got -2.0"):
        load_config("warm", "synthetic", ["method.warmth=-2"], experiments_dir=experiments)
    source = (PROJECT_ROOT / "ssl_bench" / "config.py").read_text()
    assert "lambda_max" not in source and "box_fraction" not in source and "mc_passes" not in source
