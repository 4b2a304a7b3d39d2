"""The ``comparison`` benchmark's smoke run (``python -m bench comparison --quick`` in
small): both architectures complete the same sessions with the same, right answers.

No timing is asserted — speed is the benchmark's business, not the test suite's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench._comparison_runs import JETAGENT, MONOLITH, calibrate_crunch, comparison
from bench._comparison_workload import expected_answer
from bench.comparison import quick_deployment, quick_params


@pytest.mark.timeout(400)
def test_both_architectures_give_the_same_answers(nats_url: str, tmp_path: Path) -> None:
    params = quick_params(calibrate_crunch())
    with comparison(nats_url, tmp_path, params, quick_deployment()) as runner:
        runs = [runner.run(arch, 5.0, faults=True) for arch in (MONOLITH, JETAGENT)]
    monolith, jetagent = runs
    for run in runs:
        assert run.sessions == params.sessions
        assert run.failed == 0, run.errors
        assert run.corrupted == 0, run.errors
        # Faults were met and survived (the quick run draws more of them).
        assert run.provider_calls > run.logical_calls, run.provider_outcomes
    # The same logical work: session i has the same seed (so the same plan and the same
    # faults) in both runs; ids differ only by the run's tag, then the position.
    by_position = [
        [answer for _, answer in sorted(run.answers.items())] for run in (monolith, jetagent)
    ]
    assert by_position[0] == by_position[1]
    for answer, seed in zip(by_position[0], range(1000, 1000 + params.sessions), strict=True):
        assert answer == expected_answer(seed, params)
