"""Replicates (training seeds, hardware) pooled in the paired tests, and the noise floor, on constructed runs."""

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from report_fakes import H200, write_config, write_fake_run
from ssl_bench.report import load_runs, noise_floor, summarize_groups, summarize_replicates, write_report
from ssl_bench.report.stats import detection_multiplier, minimum_detectable_effect, pooled_std

CASES = [f"c{i}" for i in range(8)]


def _cases(seed: int, level: float) -> dict:
    rng = np.random.default_rng(seed)
    return {c: (float(level + rng.normal(0, 0.03)), float(level - 0.1 + rng.normal(0, 0.03))) for c in CASES}


# (method, draw, seed, hardware) -> per-case Dice; hardware "cpu" has no provenance (a run made before it).
RUNS = {
    ("supervised", 0, None, "cpu"): _cases(1, 0.80),
    ("supervised", 0, None, "h200"): _cases(2, 0.80),
    ("supervised", 1, None, "cpu"): _cases(3, 0.78),
    ("supervised", 1, 100, "cpu"): _cases(4, 0.78),
    ("mean_teacher", 0, None, "cpu"): _cases(5, 0.81),
    ("mean_teacher", 0, None, "h200"): _cases(6, 0.81),
    ("mean_teacher", 1, None, "cpu"): _cases(7, 0.79),
    ("co_training", 1, None, "h200"): _cases(8, 0.83),
}


def _folder_name(method, seed):
    return method + (f"-seed{seed}" if seed is not None else "")


@pytest.fixture
def replicated_runs(tmp_path):
    runs = tmp_path / "runs"
    for (method, draw, seed, hardware), cases in RUNS.items():
        write_fake_run(runs, method, 0.5, draw, cases, folder_name=_folder_name(method, seed),
                       provenance=H200 if hardware == "h200" else None,
                       draw_folder=f"draw{draw}@nvidia-h200" if hardware == "h200" else None)
        folder = runs / "toy" / _folder_name(method, seed) / "frac0.5" / (f"draw{draw}" + ("@nvidia-h200" if hardware == "h200" else ""))
        write_config(folder, method, seed=seed, run__tag=f"seed{seed}" if seed is not None else "",
                     data__draw=draw, **({"logging__wandb": False} if hardware == "h200" else {}))
    return runs


def _case_means(cases):
    return {c: float(np.mean(v)) for c, v in cases.items()}


def _run_mean(cases):
    return float(np.mean(list(_case_means(cases).values())))


def test_replicates_are_averaged_and_paired_by_draw_seed_and_hardware(replicated_runs):
    groups = {g.method: g for g in summarize_groups(load_runs(replicated_runs))}
    assert set(groups) == {"supervised", "mean_teacher", "co_training"}, "supervised-seed100 is a replicate, no variant"
    supervised = groups["supervised"]
    assert supervised.n_runs == 4 and supervised.dice.n == 2
    draw_means = [np.mean([_run_mean(RUNS["supervised", 0, None, h]) for h in ("cpu", "h200")]),
                  np.mean([_run_mean(RUNS["supervised", 1, s, "cpu"]) for s in (None, 100)])]
    assert supervised.dice.mean == pytest.approx(np.mean(draw_means))
    assert supervised.dice.std == pytest.approx(np.std(draw_means, ddof=1))

    mt = groups["mean_teacher"]
    expected = [(("mean_teacher", 0, None, "cpu"), ("supervised", 0, None, "cpu")),
                (("mean_teacher", 0, None, "h200"), ("supervised", 0, None, "h200")),
                (("mean_teacher", 1, None, "cpu"), ("supervised", 1, None, "cpu"))]  # seed 1, not seed 100
    # Pairs are (draw, case): draw 0's two run pairs (CPU, H200) averaged case by case, not counted twice.
    def by_draw(side):
        draw0 = [_case_means(RUNS[pair[side]]) for pair in expected[:2]]
        return ([float(np.mean([m[c] for m in draw0])) for c in draw0[0]]
                + list(_case_means(RUNS[expected[2][side]]).values()))
    ours, theirs = by_draw(0), by_draw(1)
    assert mt.vs_reference.n_pairs == 2 * len(CASES)
    assert mt.vs_reference.p_value == pytest.approx(wilcoxon(ours, theirs).pvalue)
    assert mt.vs_reference.mean_difference == pytest.approx(np.mean(np.subtract(ours, theirs)))
    assert [(p.draw, p.run.hardware, p.reference.hardware) for p in mt.pairs] == [
        (0, "NVIDIA H200", "NVIDIA H200"), (0, "unknown", "unknown"), (1, "unknown", "unknown")]
    assert mt.cross_hardware_pairs == []
    # The difference paired by draw: each draw's mean over its run pairs.
    differences = [np.mean([_run_mean(RUNS[r]) - _run_mean(RUNS[s]) for r, s in expected[:2]]),
                   _run_mean(RUNS[expected[2][0]]) - _run_mean(RUNS[expected[2][1]])]
    assert mt.difference.mean == pytest.approx(np.mean(differences))

    (pair,) = groups["co_training"].pairs  # no supervised run on its hardware for draw 1: across hardware, marked
    assert pair.crosses_hardware and pair.reference.method == "supervised"


def test_the_noise_floor_by_hand(replicated_runs):
    runs = load_runs(replicated_runs)
    groups, sets = summarize_groups(runs), summarize_replicates(runs)
    assert sorted((s.method, s.draw, s.varies) for s in sets) == [
        ("mean_teacher", 0, "hardware"), ("supervised", 0, "hardware"), ("supervised", 1, "seed")]
    (floor,) = noise_floor(groups, sets)
    run_std = pooled_std([[_run_mean(RUNS["mean_teacher", 0, None, h]) for h in ("cpu", "h200")],
                          [_run_mean(RUNS["supervised", 0, None, h]) for h in ("cpu", "h200")],
                          [_run_mean(RUNS["supervised", 1, s, "cpu"]) for s in (None, 100)]])
    assert floor.run_std == pytest.approx(run_std) and floor.run_std_source == "this fraction"
    pairs = [(("mean_teacher", 0, None, "h200"), ("supervised", 0, None, "h200")),
             (("mean_teacher", 0, None, "cpu"), ("supervised", 0, None, "cpu")),
             (("mean_teacher", 1, None, "cpu"), ("supervised", 1, None, "cpu")),
             (("co_training", 1, None, "h200"), ("supervised", 1, None, "cpu"))]
    differences = [np.subtract(list(_case_means(RUNS[r]).values()), list(_case_means(RUNS[s]).values())) for r, s in pairs]
    case_std = math.sqrt(sum(((d - d.mean()) ** 2).sum() for d in differences) / sum(len(d) - 1 for d in differences))
    assert floor.case_std == pytest.approx(case_std)
    assert (floor.n_cases, floor.n_run_pairs) == (len(CASES), 2)  # median of mean_teacher's 3 and co_training's 1
    z = detection_multiplier()
    assert floor.detectable_effect == pytest.approx(z * math.sqrt((2 * run_std ** 2 + case_std ** 2 / 8) / 2))
    assert floor.case_level_effect == pytest.approx(z * case_std / math.sqrt(16))
    assert floor.run_pairs_for_target == math.ceil(z ** 2 * (2 * run_std ** 2 + case_std ** 2 / 8) / 0.005 ** 2)


def test_a_fraction_without_replicates_borrows_the_run_spread_of_the_others(replicated_runs):
    write_fake_run(replicated_runs, "supervised", 0.25, 0, _cases(9, 0.7))
    write_fake_run(replicated_runs, "mean_teacher", 0.25, 0, _cases(10, 0.71))
    runs = load_runs(replicated_runs)
    floors = {f.fraction: f for f in noise_floor(summarize_groups(runs), summarize_replicates(runs))}
    assert floors[0.25].replicate_sets == [] and floors[0.25].run_std_source == "all fractions"
    assert floors[0.25].run_std == pytest.approx(floors[0.5].run_std)
    assert floors[0.25].detectable_effect == pytest.approx(
        minimum_detectable_effect(floors[0.5].run_std, floors[0.25].case_std, len(CASES), 1))


def test_the_report_shows_the_noise_floor_replicates_and_cross_hardware_marks(replicated_runs, tmp_path):
    text = write_report(replicated_runs, tmp_path / "results")["markdown"].read_text()
    assert "### Noise floor" in text and "### Replicates" in text
    assert "(toy; hardware varies)" in text and "(toy; seed varies)" in text
    headline = text.split("### Methods")[1].split("###")[0]
    co_training = next(line for line in headline.splitlines() if line.startswith("| co_training |"))
    assert "†" in co_training
    assert "| co_training | 0.5 | 1 | 1 | NVIDIA H200 vs unknown † |" in text


def test_no_pair_across_hardware_where_the_draw_has_one_on_the_same_hardware(replicated_runs):
    """mean_teacher draw 1 on the H200 beside its CPU run: supervised has no H200 run of draw 1, and comparing the
    H200 run with the CPU one would add the hardware's own effect (the CPU pair already compares draw 1)."""
    folder = replicated_runs / "toy" / "mean_teacher" / "frac0.5" / "draw1@nvidia-h200"
    write_fake_run(replicated_runs, "mean_teacher", 0.5, 1, _cases(11, 0.79), provenance=H200,
                   draw_folder=folder.name)
    write_config(folder, "mean_teacher", data__draw=1, logging__wandb=False)
    mt = next(g for g in summarize_groups(load_runs(replicated_runs)) if g.method == "mean_teacher")
    assert mt.n_runs == 4 and mt.dice.n == 2
    assert [(p.draw, p.run.hardware) for p in mt.pairs] == [(0, "NVIDIA H200"), (0, "unknown"), (1, "unknown")]
    assert mt.cross_hardware_pairs == []


def test_across_hardware_a_run_is_paired_with_every_reference_of_its_draw_and_seed():
    """Regression: it was paired with whichever reference came first, so adding a replicate of the reference on a
    third machine could change the comparison arbitrarily."""
    from types import SimpleNamespace
    from ssl_bench.report.groups import match_references
    run = SimpleNamespace(draw=0, seed=0, hardware="NVIDIA H200")
    references = [SimpleNamespace(draw=0, seed=0, hardware=h) for h in ("unknown", "Intel Xeon")]
    references.append(SimpleNamespace(draw=1, seed=1, hardware="unknown"))
    assert match_references([run], references) == [(run, references[0]), (run, references[1])]
    same = SimpleNamespace(draw=0, seed=0, hardware="Intel Xeon")
    assert match_references([same], references) == [(same, references[1])], "a same-hardware pair is preferred"
