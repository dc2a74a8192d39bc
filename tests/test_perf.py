"""make perf's arithmetic and a smoke run of it on tiny synthetic data (timings themselves are never asserted)."""

import pytest

from ssl_bench.perf import main, own_overhead
from tests.conftest import TINY


def test_own_overhead_leaves_out_the_stack_cost_supervised_pays_too():
    # supervised: 0.25 s a step against a 0.20 s minimum (0.05 s of stack); a method whose minimum is 0.30 s
    # more and whose step is 0.40 s more adds a third beyond its passes; 0.30 s more adds nothing.
    assert own_overhead(0.65, 0.50, 0.25, 0.20) == pytest.approx(1 / 3)
    assert own_overhead(0.55, 0.50, 0.25, 0.20) == pytest.approx(0.0)


def test_perf_prints_every_method_against_supervised_and_its_minimum(synthetic_cache, capsys):
    overrides = [f"data.cache_dir={synthetic_cache}", *TINY]
    assert main(["--data", "synthetic", "--methods", "supervised,mean_teacher", "--steps", "2", "--warmup", "1",
                 *overrides]) == 0
    out = capsys.readouterr().out
    assert "stack / bare" in out and "own overhead" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip().startswith(("supervised ", "mean_teacher "))}
    supervised, mean_teacher = lines["supervised"].split(), lines["mean_teacher"].split()
    assert supervised[2] == "1.00" and supervised[5] == "-"
    assert mean_teacher[5].endswith("%"), "the method's own overhead is computed against supervised"
    assert "teacher:" in lines["mean_teacher"], "the recorded passes include the teacher's forward"
