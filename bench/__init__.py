"""Benchmarks of jetagent (``make bench``), each next to a baseline from the same run.

Run ``python -m bench`` (``--help`` for options). Results go to BENCHMARKS.md at the
repository root. A suite is a module exposing ``SUITE`` (a :class:`bench._harness.Suite`),
listed in ``bench.__main__.SUITE_MODULES``.
"""
