"""cps: two differently initialised networks, the labeled CPS term, the ensemble and the control sweep."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector

from ssl_bench.config import PROJECT_ROOT
from ssl_bench.losses.pseudo_label import cross_pseudo_supervision
from ssl_bench.sweep import load_sweep
from test_methods import build, make_batch


def _weights(module):
    return [parameters_to_vector(net.parameters()) for net in (module.net, module.net2)]


def test_the_two_networks_start_apart_and_the_seed_fixes_both():
    torch.manual_seed(0)
    first, second = _weights(build("cps"))
    torch.manual_seed(0)
    again = _weights(build("cps"))
    assert not torch.equal(first, second)
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])


def test_both_networks_are_optimized_and_the_ensemble_holds_no_weights_of_its_own():
    module = build("cps")
    optimized = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert optimized == {id(p) for net in (module.net, module.net2) for p in net.parameters()}
    assert not any(k.startswith("_ensemble") for k in module.state_dict())
    assert list(module.evaluation_networks()) == ["net1", "net2", "ensemble"]
    x = torch.randn(1, 1, 16, 16, 16)
    module.eval()
    mean = (module.net(x).softmax(1) + module.net2(x).softmax(1)) / 2
    torch.testing.assert_close(module.evaluation_networks()["ensemble"](x), mean.log())


@pytest.mark.parametrize("on_labeled", [True, False])
def test_cps_term_covers_the_unlabeled_images_and_the_labeled_ones_as_the_paper(on_labeled):
    module = build("cps", f"method.on_labeled={on_labeled}", "model.dropout=0")
    batch, cache = make_batch(), {}
    module.supervised_loss(batch["labeled"], cache)
    loss = module.unsupervised_loss(batch, cache)
    unlabeled = batch["unlabeled"]["image"]
    expected = cross_pseudo_supervision(module.net(unlabeled), module.net2(unlabeled))
    if on_labeled:
        labeled = batch["labeled"]["image"]
        expected = expected + cross_pseudo_supervision(module.net(labeled), module.net2(labeled))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_supervised_term_is_the_mean_of_the_two_networks_dice_ce():
    module = build("cps", "model.dropout=0")
    labeled = make_batch()["labeled"]
    expected = (module.dice_ce(module.net(labeled["image"]), labeled["label"])
                + module.dice_ce(module.net2(labeled["image"]), labeled["label"])) / 2
    assert module.supervised_loss(labeled, {}).item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_control_sweep_is_cps_without_its_unlabeled_term():
    cells = load_sweep(PROJECT_ROOT / "experiments" / "sweeps" / "cps_ensemble.yaml").cells
    assert {c.method for c in cells} == {"cps"}
    assert all(c.config().method.lambda_max == 0 for c in cells)
    assert {(c.fraction, c.draw) for c in cells} == {(f, d) for f in (0.05, 0.1) for d in (0, 1)}
