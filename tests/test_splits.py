import hashlib
import json

import pytest

from ssl_bench.data.manifest import load_manifest
from ssl_bench.data.splits import labeled_count, split_pool
from conftest import PROJECT_ROOT

POOL = [f"case_{i:03d}" for i in range(182)]


def test_labeled_count_is_ceil_and_at_least_one():
    assert labeled_count(0.05, 182) == 10   # 9.1 -> 10
    assert labeled_count(0.1, 182) == 19    # 18.2 -> 19
    assert labeled_count(0.2, 182) == 37    # 36.4 -> 37
    assert labeled_count(0.1, 180) == 18    # exact, despite 0.1 * 180 = 18.000000000000004
    assert labeled_count(1.0, 182) == 182
    assert labeled_count(0.001, 10) == 1


@pytest.mark.parametrize("draw", [0, 1, 2])
def test_splits_nested_across_fractions_and_disjoint(draw):
    previous = set()
    for frac in (0.05, 0.1, 0.2, 0.5, 1.0):
        s = split_pool(POOL, frac, draw)
        labeled, unlabeled = set(s.labeled), set(s.unlabeled)
        assert len(s.labeled) == labeled_count(frac, len(POOL))
        assert previous <= labeled, "labeled sets must be nested: 5% ⊂ 10% ⊂ 20%"
        assert not labeled & unlabeled
        assert labeled | unlabeled == set(POOL)
        previous = labeled


def test_splits_deterministic_and_independent_of_pool_order():
    a = split_pool(POOL, 0.1, 3)
    b = split_pool(list(reversed(POOL)), 0.1, 3)
    assert a == b
    assert split_pool(POOL, 0.1, 3) == a


def test_draws_differ():
    assert split_pool(POOL, 0.1, 0).labeled != split_pool(POOL, 0.1, 1).labeled


@pytest.mark.parametrize("frac", [0.0, -0.1, 1.01, float("nan")])
def test_fraction_outside_unit_interval_is_an_error(frac):
    with pytest.raises(ValueError, match="fraction"):
        split_pool(POOL, frac, 0)


def test_bad_pools_and_draws():
    with pytest.raises(ValueError, match="empty"):
        split_pool([], 0.5, 0)
    with pytest.raises(ValueError, match="more than once"):
        split_pool(["a", "a", "b"], 0.5, 0)
    with pytest.raises(ValueError, match="draw"):
        split_pool(POOL, 0.5, -1)


# ---- by patient ----------------------------------------------------------------------------------------------------
# Two images (frames) per patient, as ACDC has.
FRAMES = {f"patient{p:03d}_frame{f:02d}": f"patient{p:03d}" for p in range(1, 41) for f in (1, 12)}


@pytest.mark.parametrize("draw", [0, 1, 2])
@pytest.mark.parametrize("amount", [{"fraction": 0.1}, {"fraction": 0.5}, {"n_labeled": 3}, {"n_labeled": 7}])
def test_a_patients_images_are_never_split_between_labeled_and_unlabeled(draw, amount):
    s = split_pool(list(FRAMES), draw=draw, patient_of=FRAMES, **amount)
    labeled = {FRAMES[c] for c in s.labeled}
    unlabeled = {FRAMES[c] for c in s.unlabeled}
    assert not labeled & unlabeled
    assert set(s.labeled_patients) == labeled and set(s.unlabeled_patients) == unlabeled
    n = amount.get("n_labeled") or labeled_count(amount["fraction"], 40)
    assert len(labeled) == n and len(s.labeled) == 2 * n  # both frames of each labeled patient


@pytest.mark.parametrize("draw", [0, 1])
def test_counts_of_patients_are_nested_and_draws_differ(draw):
    three, seven = (split_pool(list(FRAMES), draw=draw, n_labeled=n, patient_of=FRAMES) for n in (3, 7))
    assert set(three.labeled) < set(seven.labeled)
    assert three.labeled_patients == seven.labeled_patients[:3]
    # a count and the fraction that gives the same count label the same patients
    assert split_pool(list(FRAMES), 7 / 40, draw, patient_of=FRAMES).labeled == seven.labeled
    assert split_pool(list(FRAMES), draw=1 - draw, n_labeled=7, patient_of=FRAMES).labeled != seven.labeled


def test_first_selection_takes_the_first_patients_in_pool_order_whatever_the_draw():
    listed = [f"patient{p:03d}_frame{f:02d}" for p in (5, 2, 9, 1) for f in (1, 12)]
    for draw in (0, 1):
        s = split_pool(listed, draw=draw, n_labeled=2, patient_of=FRAMES, selection="first")
        assert s.labeled_patients == ["patient005", "patient002"]
        assert s.labeled == listed[:4] and s.unlabeled == listed[4:]


def test_bad_counts_and_selections():
    with pytest.raises(ValueError, match="exactly one"):
        split_pool(POOL, 0.1, 0, n_labeled=3)
    with pytest.raises(ValueError, match="exactly one"):
        split_pool(POOL)
    with pytest.raises(ValueError, match="41 labeled patients asked for, but the training pool has 40"):
        split_pool(list(FRAMES), n_labeled=41, patient_of=FRAMES)
    with pytest.raises(ValueError, match="selection"):
        split_pool(POOL, 0.1, 0, selection="random")


def test_the_hippocampus_splits_are_those_its_records_were_made_with():
    """One image per patient: the labeled and unlabeled lists of every fraction and draw are exactly those of the
    per-case split the recorded hippocampus runs used (digest taken before splits went by patient)."""
    m = load_manifest(PROJECT_ROOT / "data_manifests" / "hippocampus.json")
    lists = {f"{f}/{d}": [s.labeled, s.unlabeled] for f in (0.05, 0.1, 0.2, 1.0) for d in (0, 1, 2)
             for s in [split_pool(m.pool, f, d, patient_of=m.patient_of)]}
    assert hashlib.sha256(json.dumps(lists, sort_keys=True).encode()).hexdigest() == HIPPOCAMPUS_SPLITS_SHA256
    assert hashlib.sha256(json.dumps([m.test, m.validation]).encode()).hexdigest() == HIPPOCAMPUS_HELD_OUT_SHA256
    assert split_pool(m.pool, 0.05, 0).labeled[:3] == ["hippocampus_280", "hippocampus_340", "hippocampus_351"]


HIPPOCAMPUS_SPLITS_SHA256 = "b0e8cb7e650edda52c571f5feabf480c287459e2e460808646c58358332f5900"
HIPPOCAMPUS_HELD_OUT_SHA256 = "b46d25e8c73755d018bc98c7b82d4390e9b075f6b220f149b31a629774d2891a"
