"""Every registered method on tiny synthetic batches: its loss, its gradients, its unsupervised term, and a
few steps end to end through the CLI. Method-specific checks (EMA teacher, UA-MT threshold, equivariance)
follow the generic ones."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from ssl_bench.cli import main
from ssl_bench.config import load_config
from ssl_bench.predict import output_name
from ssl_bench.registry import get_method, method_names
from ssl_bench.data.dataset import resolve_dataset
from conftest import TINY

CLASS_NAMES = ["background", "organ1", "organ2", "organ3"]
BATCH_SIZE, SIDE = 2, 16
TEACHER_METHODS = ["mean_teacher", "ua_mt"]
# Variants that leave no parameter kind out: dropout in every block, and norms with affine weights and buffers.
DIMS_AND_MODEL = {3: ["model.norm=batch", "model.dropout=0.1"], 2: ["model.dropout=0.1"]}


def build(name, *overrides, dims=3):
    """A method with the TINY network, whose self.log records into ``module.logged`` (no trainer needed)."""
    shape = [f"data.spatial_dims={dims}", f"data.patch_size={[SIDE] * dims}"]
    cfg = load_config(name, "synthetic", [*TINY, *shape, *overrides])
    module = get_method(name)(cfg, CLASS_NAMES, case_ids=["case0"])
    module.logged = {}
    module.log = lambda key, value, **kwargs: module.logged.__setitem__(key, float(torch.as_tensor(value).detach()))
    return module


def make_batch(dims=3, seed=0, labeled=BATCH_SIZE, unlabeled=BATCH_SIZE):
    g = torch.Generator().manual_seed(seed)
    shape, unlabeled_shape = ((n, 1) + (SIDE,) * dims for n in (labeled, unlabeled))
    # As the data module sends them: every organ annotated unless data.partial.alpha > 0; stream positions.
    return {"labeled": {"image": torch.randn(shape, generator=g),
                        "label": torch.randint(len(CLASS_NAMES), shape, generator=g),
                        "annotated": torch.ones(labeled, len(CLASS_NAMES) - 1, dtype=torch.bool),
                        "position": torch.arange(labeled) + seed * labeled},
            "unlabeled": {"image": torch.randn(unlabeled_shape, generator=g),
                          "position": torch.arange(unlabeled) + seed * unlabeled}}


def training_loss(module, batch) -> torch.Tensor:
    """The loss that trains the segmentation network(s): training_step's, or, for a manual-optimization method
    (whose training_step steps its own optimizers and so needs a Trainer), the segmenter loss of the pure
    ``losses(batch)`` that its training_step minimises."""
    if module.automatic_optimization:
        return module.training_step(batch, 0)
    return module.losses(batch).segmenter


# Overrides that switch a method's unsupervised term off and on, at full weight from step 0. By default λ_max;
# rampup_fraction=0 puts the ramp (λ(t), and UA-MT's threshold) at its final value from step 0.
DEFAULT_OFF_ON = (["method.lambda_max=0", "method.rampup_fraction=0"], ["method.lambda_max=1", "method.rampup_fraction=0"])
UNSUPERVISED_OFF_ON = {
    "adversarial": (["method.lambda_adv_unlabeled=0", "method.lambda_semi=0"],
                    ["method.lambda_adv_unlabeled=1", "method.lambda_semi=1", "method.semi_start_fraction=0",
                     "method.semi_threshold=0"]),
    # The control (stage 1 only) against stage 2 from step 0.
    "bcp": (["method.unlabeled_stage=false"], ["method.stage1_fraction=0"]),
}


def unsupervised_off_on(name):
    """UNSUPERVISED_OFF_ON's entry, else DEFAULT_OFF_ON, with every pseudo-label kept where a method has a confidence
    threshold (a random network is never as sure as one asks, e.g. unimatch's 95%)."""
    if name in UNSUPERVISED_OFF_ON:
        return UNSUPERVISED_OFF_ON[name]
    off, on = DEFAULT_OFF_ON
    return off, on + (["method.confidence_threshold=0"] if "confidence_threshold" in build(name).cfg.method else [])


def has_unsupervised_term(name) -> bool:
    if name in UNSUPERVISED_OFF_ON:
        return True
    module, batch, cache = build(name), make_batch(), {}
    module.supervised_loss(batch["labeled"], cache)
    return module.unsupervised_loss(batch, cache) is not None


@pytest.mark.parametrize("dims", sorted(DIMS_AND_MODEL))
@pytest.mark.parametrize("name", method_names())
def test_loss_is_finite_and_its_gradient_reaches_every_trainable_parameter_only(name, dims):
    torch.manual_seed(0)
    module = build(name, *DIMS_AND_MODEL[dims], dims=dims)
    if not module.automatic_optimization:
        return check_manual_optimization_gradients(module, make_batch(dims))
    loss = training_loss(module, make_batch(dims))
    assert torch.isfinite(loss)
    loss.backward()
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert trainable
    assert [n for n, p in trainable.items() if p.grad is None or not torch.isfinite(p.grad).all()] == []
    assert [n for n, p in module.named_parameters() if not p.requires_grad and p.grad is not None] == []


def check_manual_optimization_gradients(module, batch):
    """Each optimizer's loss is finite and reaches every parameter of that optimizer and none of the others'
    (adversarial: the segmenter's adversarial terms must not train D, nor D's loss the segmenter)."""
    losses = module.losses(batch)
    optimizers = [c["optimizer"] if isinstance(c, dict) else c for c in module.configure_optimizers()]
    groups = [{id(p) for g in opt.param_groups for p in g["params"]} for opt in optimizers]
    assert {id(p) for p in module.parameters()} == set().union(*groups)
    for loss, mine in zip([losses.segmenter, losses.discriminator], groups, strict=True):
        module.zero_grad(set_to_none=True)
        assert torch.isfinite(loss)
        loss.backward(retain_graph=True)
        reached = {id(p) for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert reached == mine
        assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", method_names())
def test_unsupervised_term_changes_the_student_gradient(name):
    if not has_unsupervised_term(name):
        pytest.skip(f"{name} has no unsupervised term")

    def student_gradient(overrides):
        torch.manual_seed(0)  # same init, noise, dropout and transforms for both weights
        module = build(name, *overrides, "model.dropout=0.1")
        training_loss(module, make_batch()).backward()
        return parameters_to_vector(p.grad for p in module.net.parameters())

    off, on = unsupervised_off_on(name)
    without, with_term = student_gradient(off), student_gradient(on)
    assert torch.isfinite(with_term).all()
    assert (with_term - without).abs().max() > 1e-6 * without.abs().max()


@pytest.mark.parametrize("name", [n for n in method_names() if "lambda_max" in build(n).cfg.method])
def test_lambda_max_zero_skips_the_unsupervised_passes(name, monkeypatch):
    # The ablation without the unsupervised term (e.g. co_training's views as a plain ensemble) must not pay
    # for that term's passes: at 16x a supervised step for co_training, they are most of the step.
    torch.manual_seed(0)
    module = build(name, "method.lambda_max=0")
    if not module.automatic_optimization:
        pytest.skip(f"{name} steps its own optimizers")
    monkeypatch.setattr(module, "unsupervised_loss", lambda *args: pytest.fail("unsupervised passes ran"))
    batch = make_batch()
    loss = module.training_step(batch, 0)
    torch.manual_seed(0)
    assert loss.item() == pytest.approx(build(name).supervised_loss(batch["labeled"], {}).item())
    assert "train/loss_unsup" not in module.logged


# The forward calls of one training step, per network: what each method declares (forward_passes, beside the
# method), every method at its analytic minimum of forwarded images, each group of passes batched into one call.
# Checked with L = U and with more unlabeled than labeled images (bcp pairs them: L = U only), at the default
# weight and, for the methods with one, at lambda_max = 0, where the unsupervised passes are skipped.
PASS_SETTINGS = {"L=U": [], "L<U": ["data.unlabeled_batch_size=4"], "lambda_max=0": ["method.lambda_max=0"]}


@pytest.mark.parametrize("setting", sorted(PASS_SETTINGS))
@pytest.mark.parametrize("name", method_names())
def test_forward_calls_per_training_step_are_the_declared_ones(name, setting):
    from ssl_bench.config import ConfigError
    try:
        module = build(name, *PASS_SETTINGS[setting])
    except ConfigError as err:
        pytest.skip(f"{name} cannot run {setting}: {err}")
    calls = {}
    for network_name, network in module.training_networks().items():
        network.register_forward_pre_hook(lambda m, args, key=network_name: calls.setdefault(key, []).append(
            args[0].shape[0]))
    d = module.cfg.data
    training_loss(module, make_batch(labeled=d.labeled_batch_size, unlabeled=d.unlabeled_batch_size))
    declared = type(module).forward_passes(module.cfg, step=0)
    assert calls == declared
    assert set(declared) <= set(module.training_networks())


def test_a_method_that_declares_no_passes_is_declared_supervised():
    assert get_method("supervised").forward_passes(load_config("supervised", "synthetic")) == {"student": [2]}


def _cli_args(name, tmp_path, cache):
    return ["train", "--method", name, "--data", "synthetic", f"run.runs_dir={tmp_path}", f"data.cache_dir={cache}",
            *TINY, "data.fraction=0.5", "trainer.max_steps=3", "trainer.val_every_n_steps=3"]


def _run_folder(name, tmp_path):
    return tmp_path / "synthetic" / name / "frac0.5" / "draw0"


@pytest.mark.parametrize("name", ["supervised", "mean_teacher", "co_training", "contrastive"])
def test_the_fcn_backbone_runs_end_to_end(name, tmp_path, synthetic_cache):
    """model.arch=fcn needs nothing per method, since every network comes from the shared factory: these four
    cover an EMA copy, one network per view and the features contrastive pretraining takes."""
    assert main(_cli_args(name, tmp_path, synthetic_cache) + ["model.arch=fcn"]) == 0
    run = _run_folder(name, tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and math.isfinite(metrics["primary"]["dice_mean"])
    assert "arch: fcn" in (run / "config.yaml").read_text()


@pytest.mark.parametrize("name", ["cps", "unimatch", "bcp"])
def test_pseudo_label_methods_run_in_2d_on_the_fcn_backbone(name, tmp_path, synthetic_cache):
    """Their boxes, strong views and feature stream in 2D, over the FCN's bottleneck; bcp crosses its stage switch
    (step 1 of 3)."""
    assert main(_cli_args(name, tmp_path, synthetic_cache) + ["model.arch=fcn", "data.spatial_dims=2",
                                                               "data.patch_size=[16,16]"]) == 0
    metrics = json.loads((_run_folder(name, tmp_path) / "metrics.json").read_text())
    assert metrics["steps"] == 3 and math.isfinite(metrics["primary"]["dice_mean"])


@pytest.mark.parametrize("name", method_names())
def test_a_few_steps_end_to_end_through_the_cli(name, tmp_path, synthetic_cache):
    assert main(_cli_args(name, tmp_path, synthetic_cache) + ["eval.save_predictions=true"]) == 0
    metrics = json.loads((_run_folder(name, tmp_path) / "metrics.json").read_text())
    assert metrics["steps"] == 3
    assert set(metrics["results"]["last"]) == set(build(name).evaluation_networks())
    primary = load_config(name, "synthetic").method.primary_model
    assert metrics["primary"]["model"] == primary and math.isfinite(metrics["primary"]["dice_mean"])
    if name in TEACHER_METHODS:
        assert set(metrics["results"]["last"]) == {"student", "teacher"} and primary == "teacher"
    if name == "co_training":
        assert set(metrics["results"]["last"]) == {"ensemble", "view0", "view1", "view2"} and primary == "ensemble"
    if name == "cps":
        assert set(metrics["results"]["last"]) == {"net1", "net2", "ensemble"} and primary == "net1"
    if name == "bcp":
        assert set(metrics["results"]["last"]) == {"student", "teacher"} and primary == "teacher"
    _assert_the_checkpoint_loads_and_predicts_as_evaluation(name, tmp_path)


def _assert_the_checkpoint_loads_and_predicts_as_evaluation(name, tmp_path):
    """Lightning's load_from_checkpoint rebuilds the method from last.ckpt alone, and `ssl-bench predict` on a test
    image writes, on the image's grid and affine, the label map the run's evaluation saved for it."""
    run = _run_folder(name, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    module = get_method(name).load_from_checkpoint(last)
    saved = torch.load(last, weights_only=True)["state_dict"]
    assert module.cfg.method.name == name and module.state_dict().keys() == saved.keys()
    assert all(torch.equal(value, saved[key]) for key, value in module.state_dict().items())
    manifest, root = resolve_dataset(module.cfg)
    case = manifest.case_by_id[manifest.test[0]]
    image = manifest.dataset_dir(root) / case.image
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "predicted"), "--device", "cpu"]) == 0
    predicted = nib.load(str(tmp_path / "predicted" / output_name(image)))
    evaluated = nib.load(str(run / "predictions" / f"{case.id}.nii.gz"))
    reference = nib.load(str(image))
    assert predicted.shape == reference.shape and np.allclose(predicted.affine, reference.affine)
    assert predicted.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(predicted.dataobj), np.asarray(evaluated.dataobj))


# ---- the protocol's backbone: the stochastic passes docs/methods.md names come from its dropout ------------------
def test_every_method_trains_the_same_backbone_with_dropout():
    reference = load_config("supervised", "hippocampus").model
    assert reference.dropout > 0
    for name in method_names():
        assert load_config(name, "hippocampus").model == reference, name


def test_pi_model_passes_differ_by_their_dropout_masks_without_any_noise():
    """Regression: with the former dropout-free backbone the Π-model's two passes differed only by the input
    noise and its consistency term was inert on hippocampus (gradient 0.001 of the supervised one)."""
    def consistency(*overrides):
        torch.manual_seed(0)
        module = build("pi_model", "method.noise_std=0", *overrides)
        cache = {}
        module.supervised_loss(make_batch()["labeled"], cache)
        return float(module.unsupervised_loss(make_batch(), cache).detach())

    assert consistency() > 1e-4
    assert consistency("model.dropout=0") < 1e-10


# ---- EMA teacher (mean_teacher, ua_mt) ------------------------------------------------------------------
@pytest.mark.parametrize("name", TEACHER_METHODS)
def test_teacher_is_frozen_outside_the_optimizer_and_inside_the_state_dict(name):
    module = build(name)
    teacher = module.evaluation_networks()["teacher"]
    assert not any(p.requires_grad for p in teacher.parameters())
    optimized = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert optimized == {id(p) for p in module.net.parameters()}
    teacher_keys = {k for k in module.state_dict() if k.startswith("teacher.")}
    assert len(teacher_keys) == len(teacher.state_dict()) > 0


@pytest.mark.parametrize("name", TEACHER_METHODS)
def test_teacher_is_the_ema_of_the_student_after_every_optimizer_step(name, tmp_path, synthetic_cache, monkeypatch):
    method_cls = get_method(name)
    step_and_update_teacher = method_cls.optimizer_step
    updates = []  # (teacher before, teacher after, student) at each update
    teacher_modes = []

    def recording(self, *args, **kwargs):
        teacher_modes.append(self.teacher.training)
        before = parameters_to_vector(self.teacher.parameters()).clone()
        step_and_update_teacher(self, *args, **kwargs)
        updates.append((before, parameters_to_vector(self.teacher.parameters()).clone(),
                        parameters_to_vector(self.net.parameters()).clone()))

    monkeypatch.setattr(method_cls, "optimizer_step", recording)
    assert main(_cli_args(name, tmp_path, synthetic_cache)) == 0
    assert len(updates) == 3
    assert all(teacher_modes)  # train mode during the step: its dropout (if any) is active, as the methods need
    decay = load_config(name, "synthetic").method.ema_decay
    initial = updates[0][0]  # the teacher starts as a copy of the initial student
    previous_student = initial
    for before, after, student in updates:
        assert not torch.equal(student, previous_student)  # an optimizer step came before each update
        torch.testing.assert_close(after, decay * before + (1 - decay) * student)
        previous_student = student
    checkpoint = torch.load(_run_folder(name, tmp_path) / "checkpoints" / "last.ckpt", weights_only=False)
    restored = build(name)
    restored.load_state_dict(checkpoint["state_dict"])
    final_teacher, final_student = (parameters_to_vector(n.parameters()) for n in (restored.teacher, restored.net))
    torch.testing.assert_close(final_teacher, updates[-1][1])
    assert not torch.equal(final_teacher, initial) and not torch.equal(final_teacher, final_student)


# ---- UA-MT: threshold and kept fraction ------------------------------------------------------------------
def test_ua_mt_threshold_follows_the_lambda_ramp_and_kept_fraction_is_logged(monkeypatch):
    module = build("ua_mt", "trainer.max_steps=100", "method.rampup_fraction=0.4")
    ln_c = math.log(len(CLASS_NAMES))
    for step, ramp in [(0, math.exp(-5)), (20, math.exp(-5 / 4)), (40, 1.0), (100, 1.0)]:
        monkeypatch.setattr(type(module), "global_step", property(lambda self, step=step: step))
        assert module.threshold() == pytest.approx((0.75 + 0.25 * ramp) * ln_c)
    module.unsupervised_loss(make_batch(), {})
    assert 0.0 <= module.logged["train/kept_fraction"] <= 1.0


def test_ua_mt_keeps_confident_teacher_voxels_and_drops_uniform_ones():
    module = build("ua_mt", "method.rampup_fraction=0")  # threshold at its highest: ln C
    module.teacher = teacher = nn.Conv3d(1, len(CLASS_NAMES), kernel_size=1)
    nn.init.zeros_(teacher.weight)
    nn.init.zeros_(teacher.bias)  # uniform p̄: entropy ln C, not below the threshold
    assert module.unsupervised_loss(make_batch(), {}) == 0 and module.logged["train/kept_fraction"] == 0.0
    with torch.no_grad():
        teacher.bias[0] = 20.0  # confident p̄: entropy ≈ 0
    assert module.unsupervised_loss(make_batch(), {}) > 0 and module.logged["train/kept_fraction"] == 1.0


# ---- transformation consistency: zero exactly for equivariant networks --------------------------------------
class AddsCoordinateRamp(nn.Module):
    """Per-voxel logits plus a ramp along the first spatial axis on the background logit only (a ramp on every
    logit would cancel in the softmax): not equivariant to flipping that axis."""

    def __init__(self, num_classes):
        super().__init__()
        self.per_voxel = nn.Conv3d(1, num_classes, kernel_size=1)

    def forward(self, x):
        logits = self.per_voxel(x)
        logits[:, 0] += torch.linspace(0, 1, x.shape[2]).view(1, -1, 1, 1)
        return logits


@pytest.mark.parametrize("make_net, equivariant", [
    (lambda classes: nn.Conv3d(1, classes, kernel_size=1), True),
    (lambda classes: nn.Conv3d(1, classes, kernel_size=3, padding=1), False),  # random kernel: not symmetric
    (AddsCoordinateRamp, False),
], ids=["1x1x1 conv", "3x3x3 conv", "coordinate ramp"])
def test_transform_consistency_measures_equivariance(make_net, equivariant):
    torch.manual_seed(0)
    module = build("transform_consistency")
    module.net = make_net(len(CLASS_NAMES))
    loss = module.unsupervised_loss(make_batch(), {})
    if equivariant:
        assert loss.item() == pytest.approx(0.0, abs=1e-12)
    else:
        assert loss.item() > 1e-6


def test_a_training_step_logs_only_on_the_steps_its_loggers_write(tmp_path, synthetic_cache, monkeypatch):
    """Each self.log costs milliseconds of Python, a quarter of a supervised step on a GPU: a training step's values
    are handed to Lightning only on the steps the loggers write (trainer.log_every_n_steps), and the CSV log holds the
    same steps as when every step logged; validation logs every time."""
    import csv
    import lightning.pytorch as pl
    calls = []
    log = pl.LightningModule.log

    def recording_log(self, name, value, *args, **kwargs):
        calls.append((name, self.global_step))
        return log(self, name, value, *args, **kwargs)

    monkeypatch.setattr(pl.LightningModule, "log", recording_log)
    args = _cli_args("mean_teacher", tmp_path, synthetic_cache)
    assert main([*args, "trainer.max_steps=6", "trainer.val_every_n_steps=3", "trainer.log_every_n_steps=3"]) == 0
    training = {step for name, step in calls if name.startswith("train/")}
    assert training == {2, 5}, "steps 3 and 6 (global_step 2 and 5 while they run)"
    assert {step for name, step in calls if name == "val/dice_mean"} == {3, 6}
    with open(next((_run_folder("mean_teacher", tmp_path) / "csv").rglob("metrics.csv"))) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == [2, 5]
