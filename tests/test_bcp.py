"""bcp: the stage switch as a function of global_step, the teacher hand-over and EMA, its stage-2 passes and
pseudo-labels, a resume across the switch, and its control."""

import json

import pytest
import torch
from torch.nn.utils import parameters_to_vector

from ssl_bench.cli import main
from ssl_bench.config import PROJECT_ROOT, ConfigError, load_config
from ssl_bench.registry import get_method
from ssl_bench.sweep import load_sweep
from test_methods import BATCH_SIZE, build, make_batch
from test_train_e2e import _args, _assert_same_final_weights, _killed_after_first_checkpoint, _run_dir


def _at_step(monkeypatch, module, step):
    monkeypatch.setattr(type(module), "global_step", property(lambda self: step))


def test_the_stage_is_a_function_of_global_step(monkeypatch):
    module = build("bcp", "trainer.max_steps=40", "method.stage1_fraction=0.25")
    for step, unlabeled in [(0, False), (9, False), (10, True), (39, True)]:
        _at_step(monkeypatch, module, step)
        assert module.in_unlabeled_stage() is unlabeled
    control = build("bcp", "trainer.max_steps=40", "method.unlabeled_stage=false")
    _at_step(monkeypatch, control, 39)
    assert not control.in_unlabeled_stage()


def test_stage_two_passes_pseudo_labels_and_loss(monkeypatch):
    module = build("bcp", "method.stage1_fraction=0")
    calls = {}
    for name, net in module.evaluation_networks().items():
        net.register_forward_pre_hook(lambda m, args, key=name: calls.setdefault(key, []).append(
            (args[0].shape[0], torch.is_grad_enabled())))
    reduced = []
    import ssl_bench.methods.bcp as bcp
    real = bcp.largest_component_per_class
    monkeypatch.setattr(bcp, "largest_component_per_class", lambda *a: reduced.append(a) or real(*a))
    module.training_step(make_batch(), 0)
    # The teacher on the U unlabeled images without gradients, the student on the L/2 + U/2 mixed images.
    assert calls == {"teacher": [(BATCH_SIZE, False)], "student": [(BATCH_SIZE, True)]}
    assert len(reduced) == 1 and reduced[0][0].shape == (BATCH_SIZE, 1, 16, 16, 16)
    logged = module.logged
    assert logged["train/unsup_weight"] == 0.5
    assert logged["train/loss"] == pytest.approx(logged["train/loss_sup"] + 0.5 * logged["train/loss_unsup"], rel=1e-6)


def test_invalid_batch_sizes_are_refused():
    with pytest.raises(ConfigError, match="data.labeled_batch_size"):
        load_config("bcp", "synthetic", ["data.labeled_batch_size=3", "data.unlabeled_batch_size=3"])
    with pytest.raises(ConfigError, match="data.unlabeled_batch_size"):
        load_config("bcp", "synthetic", ["data.unlabeled_batch_size=4"])
    assert load_config("bcp", "synthetic", ["data.unlabeled_batch_size=4", "method.unlabeled_stage=false"])


def _cli(root, cache, *extra):
    return _args(root, cache, "data.fraction=0.5", "trainer.max_steps=4", "trainer.val_every_n_steps=2",
                 "method.stage1_fraction=0.5", *extra, method="bcp")


def test_the_teacher_is_the_student_in_stage_one_then_its_ema(tmp_path, synthetic_cache, monkeypatch):
    method_cls = get_method("bcp")
    step_and_update = method_cls.optimizer_step
    updates = []  # (teacher before, teacher after, student) at each step

    def recording(self, *args, **kwargs):
        before = parameters_to_vector(self.teacher.parameters()).clone()
        step_and_update(self, *args, **kwargs)
        updates.append((before, parameters_to_vector(self.teacher.parameters()).clone(),
                        parameters_to_vector(self.net.parameters()).clone()))

    monkeypatch.setattr(method_cls, "optimizer_step", recording)
    assert main(_cli(tmp_path, synthetic_cache)) == 0
    assert len(updates) == 4
    for before, after, student in updates[:2]:  # stage 1: a copy
        assert torch.equal(after, student)
    for before, after, student in updates[2:]:  # stage 2: the EMA, from the stage-1 student
        torch.testing.assert_close(after, 0.99 * before + 0.01 * student)
    assert torch.equal(updates[2][0], updates[1][2])
    metrics = json.loads((_run_dir(tmp_path, method="bcp") / "metrics.json").read_text())
    assert metrics["primary"]["model"] == "teacher"


def test_a_run_resumed_before_the_switch_ends_as_the_uninterrupted_one(tmp_path, synthetic_cache, monkeypatch):
    """Killed after its step-2 checkpoint (the switch is at step 2) and started again, a bcp run ends with the
    weights (student and teacher) of the run never stopped, bit for bit: boxes from the stream positions, the
    stage and the teacher's hand-over from global_step and the checkpoint."""
    uninterrupted, resumed = tmp_path / "a", tmp_path / "b"
    assert main(_cli(uninterrupted, synthetic_cache)) == 0
    _killed_after_first_checkpoint(resumed, _cli(resumed, synthetic_cache), monkeypatch)  # at step 2
    assert main(_cli(resumed, synthetic_cache)) == 0
    assert json.loads((_run_dir(resumed, method="bcp") / "metrics.json").read_text())["resumed_from_step"] == 2
    _assert_same_final_weights(uninterrupted, resumed, "bcp")


def test_the_control_sweep_is_stage_one_for_the_whole_run():
    cells = load_sweep(PROJECT_ROOT / "experiments" / "sweeps" / "bcp_stage1_control.yaml").cells
    assert cells and all(c.method == "bcp" and c.config().method.unlabeled_stage is False for c in cells)


def test_a_step_with_an_odd_labeled_batch_is_a_clear_error():
    """Under DDP a rank gets data.labeled_batch_size / devices images, which the config cannot check."""
    module = build("bcp")
    batch = make_batch()
    labeled = {k: v[:1] for k, v in batch["labeled"].items()}
    with pytest.raises(ValueError, match="even multiple of the number of devices"):
        module.supervised_loss(labeled, {"batch": batch})
