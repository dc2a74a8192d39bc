import pytest
from omegaconf import OmegaConf

from ssl_bench.config import ConfigError, load_config, run_dir
from ssl_bench.registry import UnknownMethodError, get_method, method_names, register_method


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
    ("data.spatial_dims=4", "data.spatial_dims"), ("optim.schedule=step", "optim.schedule"),
    ("model.arch=vnet", "model.arch"), ("data.patch_size=[32,32]", "data.patch_size"),
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
