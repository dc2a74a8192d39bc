import pytest

from ssl_bench.data.splits import labeled_count, split_pool

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
