"""Bounded metric labels: values from outside the configuration collapse to ``other``.

Label values come from events, and events come from publishers: a request on
``ja.request.<anything>`` is rejected, but its rejection names the tenant it was sent
for. Without a bound every such name would be a new Prometheus series. So (README,
"Session views, metrics, dashboards, traces"):

- a ``tenant`` label is a configured tenant (``JETAGENT_TENANTS``), ``unknown`` (a request
  that named none), or ``other``;
- a ``model`` label is a model of the catalog (``JETAGENT_MODELS``), always, or one of
  the first :data:`DISTINCT_LIMIT` other names reported (tools record calls of their own
  models with ``record_call``), or ``other``;
- every other label (and tenants when ``JETAGENT_TENANTS=*``) keeps its first
  :data:`DISTINCT_LIMIT` values per dimension; later new values are ``other``. The values
  admitted so far are part of the checkpointed totals, so a restart or a rebuild admits
  exactly the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DISTINCT_LIMIT", "OTHER", "LabelPolicy"]

OTHER = "other"
UNKNOWN = "unknown"
DISTINCT_LIMIT = 64
"""Distinct values one free label dimension may take before new ones become ``other``."""


@dataclass(frozen=True)
class LabelPolicy:
    """Which label values are known; ``None`` means "any, up to the distinct limit"."""

    tenants: frozenset[str] | None = None
    models: frozenset[str] | None = None
    limit: int = DISTINCT_LIMIT

    def tenant(self, value: str, admitted: dict[str, dict[str, bool]]) -> str:
        if value == UNKNOWN:
            return value
        if self.tenants is not None:
            return value if value in self.tenants else OTHER
        return self.free("tenant", value, admitted)

    def model(self, value: str, admitted: dict[str, dict[str, bool]]) -> str:
        # Catalog models never compete for the free places, so forged names cannot
        # crowd a real model out of its own series.
        if self.models is not None and value in self.models:
            return value
        return self.free("model", value, admitted)

    def free(self, dimension: str, value: str, admitted: dict[str, dict[str, bool]]) -> str:
        """``value``, if it is (or may become) one of the dimension's admitted values."""
        values = admitted.get(dimension)
        if values is None:
            values = admitted[dimension] = {}
        if value in values:
            return value
        if len(values) >= self.limit:
            return OTHER
        values[value] = True
        return value
