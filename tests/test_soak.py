"""Memory stays bounded: a short soak of mixed request sizes, then small ones.

`python -m bench.soak` runs the long version and records the curve in
docs/benchmark.md.
"""

from pathlib import Path

import pytest

from bench.soak import growth, run_soak
from tests.stacks import running_stack

REQUESTS = 90
# Allowed growth of peak RSS over the second half compared with the first.
# Allocators keep some slack, so a few percent is noise; a leak of even 1 MB
# per request would exceed it.
MAX_GROWTH = 0.10


@pytest.mark.slow
def test_memory_levels_off(logs_dir: Path) -> None:
    with running_stack(logs_dir, "soak") as stack, stack.client() as http:
        assert stack.api is not None
        samples, collage_faces = run_soak(
            http, stack.workers[0].process.pid, stack.api.process.pid, REQUESTS
        )

    assert collage_faces >= 48
    assert {sample.status for sample in samples} == {200}
    assert growth(samples, "worker_rss") < MAX_GROWTH
    assert growth(samples, "api_rss") < MAX_GROWTH
