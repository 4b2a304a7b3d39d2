"""``python -m bench._engine_service <jetagent CLI arguments>``: a service the bench can profile.

This is ``python -m jetagent.cli`` (``orchestrator``, ``worker reasoning tools``, ...) and
nothing more, except that with ``BENCH_PROFILE_OUT=<path>`` in its environment it
answers two signals: ``SIGUSR1`` starts cProfile on the service's main thread (its event
loop: all of the orchestrator's and worker's own work runs there) and writes
``<path>.on``; ``SIGUSR2`` stops it and writes the statistics to ``<path>`` (atomically).
So the benchmark profiles exactly the window it measures, not the start-up. Without the
variable it behaves exactly like the CLI: it is how the ``engine`` suite always starts
the services. It imports nothing of the bench or of jetagent before the CLI, so another
commit's interpreter can run this file as it is (``bench._against``).
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from pathlib import Path
from types import FrameType

__all__ = ["main"]

PROFILE_ENV = "BENCH_PROFILE_OUT"


def _install_profiling(out: Path) -> None:
    current: list[cProfile.Profile] = []

    def start(signum: int, frame: FrameType | None) -> None:
        if current:
            return
        profile = cProfile.Profile()
        current.append(profile)
        profile.enable()
        out.with_name(out.name + ".on").write_text("on")

    def stop(signum: int, frame: FrameType | None) -> None:
        if not current:
            return
        profile = current.pop()
        profile.disable()
        tmp = out.with_name(out.name + ".tmp")
        profile.dump_stats(tmp)
        os.replace(tmp, out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def main() -> None:
    out = os.environ.get(PROFILE_ENV)
    if out:
        _install_profiling(Path(out))
    try:
        from jetagent.cli._app import main as cli
    except ModuleNotFoundError:  # a commit from before the CLI was a package (``--against``)
        from jetagent.cli import main as cli  # type: ignore[attr-defined,no-redef,unused-ignore]

    sys.argv = ["jetagent", *sys.argv[1:]]
    cli()


if __name__ == "__main__":
    main()
