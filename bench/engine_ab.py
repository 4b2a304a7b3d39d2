"""``python -m bench.engine_ab A B [C ...]``: two or more commits' engines, and nothing else.

The ``engine`` suite with ``--against`` runs its whole table (baselines, scaled-out
platforms) before the comparison of commits; on a busy machine that is long enough for the
load to change under it. This runs only the comparison (``bench._engine_versus``): the
1 + 1 platform of each commit (``this`` for the working tree, else any git revision, built
by ``bench._against``) on one fresh nats-server, ``--repeats`` rotated rounds of workflows
one at a time and many at once, every process metered, then profiled once each; it prints
the markdown (nothing is written to BENCHMARKS.md).
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from jetagent.embedded import EmbeddedServer

from ._against import build_commit
from ._engine_analysis import Sizes
from ._engine_platform import EnginePlatform, engine_platform
from ._engine_versus import versus_commits
from ._services import THIS_CODE, ServiceCode

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _code(ref: str) -> tuple[str, ServiceCode]:
    if ref == "this":
        return "this tree", THIS_CODE
    commit = build_commit(ref)
    return commit.label, commit.code


@app.command()
def main(
    commits: Annotated[list[str], typer.Argument(help="`this` (the working tree) or revisions.")],
    repeats: Annotated[int, typer.Option(help="Rotated rounds per commit.")] = 8,
    sequential: Annotated[int, typer.Option(help="Workflows one at a time per round.")] = 60,
    concurrent: Annotated[int, typer.Option(help="Workflows at once per round.")] = 200,
) -> None:
    """Compare the engines of COMMITS side by side (CPU per step, timeline, messages)."""
    if len(commits) < 2:
        raise typer.BadParameter("name at least two commits (`this` is the working tree)")
    codes = [_code(ref) for ref in commits]
    tmp = Path(tempfile.mkdtemp(prefix="jetagent-ab-"))
    server = EmbeddedServer(tmp / "nats").start()
    try:
        with ExitStack() as stack:
            platforms: dict[str, EnginePlatform] = {}
            for i, (label, code) in enumerate(codes):
                platform = stack.enter_context(
                    engine_platform(
                        server.url, f"ab{i}", tmp / "logs", code=code, profile_dir=tmp / "prof"
                    )
                )
                platform.concurrent(min(concurrent, 50))  # warm-up at load too
                platforms[label] = platform
            (first, this), *others = platforms.items()
            sizes = Sizes(timeline=sequential, profiled=min(sequential, 40), concurrent=concurrent)
            print(versus_commits((first, this), dict(others), server.pid, sizes, repeats))
    finally:
        server.stop()


if __name__ == "__main__":
    app()
