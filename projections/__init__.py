"""Read models and metrics derived from jetagent's events.

- ``projections.service``: the projection service (session views in ``JA_SESSIONS``,
  metric totals, checkpoints in ``JA_PROJECTIONS``, rebuild from sequence 0);
- ``projections.costs``: token, cost and operations metrics for Prometheus.
"""
