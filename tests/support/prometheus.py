"""A throwaway Prometheus server (Debian's ``prometheus`` package) for tests.

It runs ``/usr/bin/prometheus`` on a free loopback port with its own storage folder and
a one-second scrape interval, scraping the targets given, and answers PromQL through the
HTTP API (``/api/v1/query`` and ``/api/v1/query_range``) as Grafana would ask it.

Prometheus pushes targets to its scrapers on a 5 s ticker, so the first scrape comes
5-7.5 s after the start whatever the interval: wait for :meth:`Prometheus.scraped`, never
for a fixed time. :func:`prometheus_binary` says what to do when the binary is missing:
on CI (``CI=true``, where ``.ci/run`` installs it) that is a failure, elsewhere a skip.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from jetagent.embedded import free_port
from jetagent.testing import SupervisedProcess, eventually

__all__ = ["Prometheus", "Series", "prometheus_binary"]

INSTALL = "apt-get update && apt-get install -y --no-install-recommends prometheus"


def prometheus_binary() -> tuple[str, str]:
    """``(prometheus, promtool)``; fails the test on CI without them, else skips it."""
    found = shutil.which("prometheus"), shutil.which("promtool")
    if found[0] and found[1]:
        return found[0], found[1]
    why = f"the prometheus and promtool binaries are not installed (`{INSTALL}`)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why}; .ci/run installs them on CI, so this is a broken CI machine")
    pytest.skip(why)


@dataclass(frozen=True)
class Series:
    """One series of a query's answer: its labels and values (NaN kept as NaN)."""

    labels: dict[str, str]
    values: list[float]

    @property
    def finite(self) -> list[float]:
        return [v for v in self.values if not math.isnan(v) and not math.isinf(v)]


class Prometheus:
    """``prometheus`` scraping ``targets`` (``host:port`` each) every second."""

    def __init__(
        self, folder: Path, targets: Sequence[str], *, interval: str = "1s", job: str = "jetagent"
    ) -> None:
        self.binary, self.promtool = prometheus_binary()
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "prometheus.yml"
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
        }
        self.config.write_text(yaml.safe_dump(config))
        self.targets = list(targets)
        self.process = SupervisedProcess(
            "prometheus",
            [
                self.binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            log_file=folder / "prometheus.log",
        )
        self._http = httpx.AsyncClient(base_url=self.url, timeout=10)

    def check_config(self, path: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``promtool check config`` of ``path`` (default: this server's own)."""
        return subprocess.run(
            [self.promtool, "check", "config", str(path or self.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    async def start(self) -> Prometheus:
        self.process.start()

        async def ready() -> bool:
            try:
                return (await self._http.get("/-/ready")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(ready, timeout=30, alive=self.process.check_alive, what="prometheus ready")
        return self

    async def close(self) -> None:
        await self._http.aclose()
        self.process.close(timeout=10)

    async def _get(self, path: str, **params: Any) -> Any:
        response = await self._http.get(path, params=params)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('error', body)}")
        return body["data"]

    async def targets_up(self) -> dict[str, str]:
        """Each target's scrape health (``up``, ``down``, ``unknown``) and last error."""
        data = await self._get("/api/v1/targets")
        found = {}
        for target in data["activeTargets"]:
            error = f" ({target['lastError']})" if target["lastError"] else ""
            found[target["labels"]["instance"]] = target["health"] + error
        return found

    async def scraped(self) -> bool:
        """Whether every target has been scraped successfully at least once."""
        health = await self.targets_up()
        return set(health) == set(self.targets) and all(h == "up" for h in health.values())

    async def query(self, expr: str, *, at: float | None = None) -> list[Series]:
        """An instant query (as a stat panel's)."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = await self._get("/api/v1/query", **params)
        return _series(data)

    async def query_range(
        self, expr: str, *, start: float, end: float, step: float = 1.0
    ) -> list[Series]:
        """A range query (as a time series panel's)."""
        data = await self._get("/api/v1/query_range", query=expr, start=start, end=end, step=step)
        return _series(data)

    async def label_values(self, label: str, match: str) -> list[str]:
        """What a ``label_values(match, label)`` template variable lists."""
        values: list[str] = await self._get(f"/api/v1/label/{label}/values", **{"match[]": match})
        return values


def _series(data: dict[str, Any]) -> list[Series]:
    kind = data["resultType"]
    if kind == "scalar":
        return [Series({}, [float(data["result"][1])])]
    found = []
    for item in data["result"]:
        points = item["values"] if kind == "matrix" else [item["value"]]
        found.append(Series(item["metric"], [float(value) for _, value in points]))
    return found
