"""ssl-bench diagnose: gradient norms of the supervised and the weighted unsupervised term of a trained run."""

import math

import pytest

from conftest import TINY
from ssl_bench.cli import main
from ssl_bench.config import ConfigError
from ssl_bench.registry import get_method, method_names
from ssl_bench.tools.diagnostics import diagnose

STEPS = 4


def _train(method, tmp_path, cache, *extra):
    args = ["train", "--method", method, "--data", "synthetic", f"run.runs_dir={tmp_path}", f"data.cache_dir={cache}",
            *TINY, "data.fraction=0.5", f"trainer.max_steps={STEPS}", f"trainer.val_every_n_steps={STEPS}", *extra]
    assert main(args) == 0
    return tmp_path / "synthetic" / method / "frac0.5" / "draw0"


def test_mean_teacher_gradients_and_their_ratio(tmp_path, synthetic_cache, capsys):
    # A ramp that is over by the last step: λ at the checkpoint is lambda_max.
    run = _train("mean_teacher", tmp_path, synthetic_cache, "method.rampup_fraction=0.25", "method.lambda_max=10.0")
    results = diagnose(run, 2, [f"data.cache_dir={synthetic_cache}"])
    assert len(results) == 2
    for r in results:
        assert r.weight == pytest.approx(10.0)
        assert r.grad_sup > 0 and r.grad_unsup > 0 and -1.0 <= r.cosine <= 1.0
        assert r.ratio == pytest.approx(r.grad_unsup / r.grad_sup)
    # The gradient of λ·L_unsup is linear in λ: the same batches (seeded) with λ halved halve it.
    halved = diagnose(run, 2, [f"data.cache_dir={synthetic_cache}", "method.lambda_max=5.0"])
    for full, half in zip(results, halved):
        assert half.grad_sup == pytest.approx(full.grad_sup, rel=1e-5)
        assert half.grad_unsup == pytest.approx(full.grad_unsup / 2, rel=1e-4)
    # Without an unsupervised weight the term moves nothing.
    zero = diagnose(run, 1, [f"data.cache_dir={synthetic_cache}", "method.lambda_max=0.0"])[0]
    assert zero.grad_unsup == 0.0 and zero.ratio == 0.0 and math.isnan(zero.cosine)

    assert main(["diagnose", str(run), f"data.cache_dir={synthetic_cache}", "--batches", "1"]) == 0
    assert "median ratio" in capsys.readouterr().out


def _diagnosable():
    """Every registered method that adds λ(t)·L_unsup under automatic optimization (what diagnose measures)."""
    from ssl_bench.methods.base_config import SemiSupervisedConfig
    return [name for name in method_names() if issubclass(get_method(name).config_class, SemiSupervisedConfig)
            and get_method(name).training_step is get_method("supervised").training_step]


def test_the_diagnosable_methods_are_the_consistency_family():
    assert {"mean_teacher", "pi_model", "ua_mt", "transform_consistency", "co_training"} <= set(_diagnosable())


@pytest.mark.parametrize("method", _diagnosable())
def test_every_consistency_method_can_be_diagnosed(method, tmp_path, synthetic_cache):
    # Regression: the Π-model's consistency term reuses its supervised passes through the step's cache;
    # diagnose gave each term its own empty cache and failed with KeyError('labeled_passes').
    run = _train(method, tmp_path, synthetic_cache, "method.rampup_fraction=0.25")
    [result] = diagnose(run, 1, [f"data.cache_dir={synthetic_cache}"])
    assert result.grad_sup > 0 and result.grad_unsup > 0 and math.isfinite(result.cosine)


def test_adversarial_is_diagnosed_by_its_segmenter_loss_split(tmp_path, synthetic_cache, capsys):
    # Self-training from step 0 and D's threshold at 0, so every unsupervised term acts at the checkpoint.
    run = _train("adversarial", tmp_path, synthetic_cache, "method.semi_start_fraction=0", "method.semi_threshold=0")
    [result] = diagnose(run, 1, [f"data.cache_dir={synthetic_cache}"])
    assert result.weight is None and result.weighted_loss_unsup == result.loss_unsup > 0
    assert result.grad_sup > 0 and result.grad_unsup > 0 and math.isfinite(result.cosine)
    # Its terms are its λs times their losses: all λ at 0, nothing but L_sup is left.
    off = ["method.lambda_adv_labeled=0", "method.lambda_adv_unlabeled=0", "method.lambda_semi=0"]
    [zero] = diagnose(run, 1, [f"data.cache_dir={synthetic_cache}", *off])
    assert zero.grad_sup == pytest.approx(result.grad_sup, rel=1e-5)
    assert zero.grad_unsup == 0.0 and zero.loss_unsup == 0.0
    # The self-training term counts from the checkpoint's step, as in training: starting after it, it is absent.
    [before_start] = diagnose(run, 1, [f"data.cache_dir={synthetic_cache}", "method.lambda_adv_labeled=0",
                                       "method.lambda_adv_unlabeled=0", "method.semi_start_fraction=1.5"])
    assert before_start.grad_unsup == 0.0

    assert main(["diagnose", str(run), f"data.cache_dir={synthetic_cache}", "--batches", "1"]) == 0
    assert "unsupervised terms weighted by their own λ" in capsys.readouterr().out


def test_a_method_without_unsupervised_term_is_a_clear_error(tmp_path, synthetic_cache):
    run = _train("supervised", tmp_path, synthetic_cache)
    with pytest.raises(ConfigError, match="supervised has no unsupervised term"):
        diagnose(run, 1, [f"data.cache_dir={synthetic_cache}"])


def test_not_a_run_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path)]) == 2
    assert f"{tmp_path} is not a run folder (no config.yaml)" in capsys.readouterr().err
