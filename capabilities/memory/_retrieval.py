"""Ranking memories: the ``Retriever`` protocol, BM25 (the default), the plug-in point.

A retriever is built for one fixed set of documents (``index``) and then only read
(``search``), so a worker can swap in a fresh one when memories arrive while searches on
the old one finish undisturbed. Both calls run in a worker thread: an implementation may
block (an embedding model, an HTTP call to an embedding service).

``JETAGENT_MEMORY_RETRIEVER=module:factory`` names a callable that takes no arguments and
returns a new :class:`Retriever`; without it the worker uses :class:`BM25Retriever`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import bm25s  # type: ignore[import-untyped]
import Stemmer  # type: ignore[import-not-found]

from jetagent import ConfigError
from jetagent.plugins import load

__all__ = [
    "RETRIEVER_ENV",
    "BM25Retriever",
    "Retriever",
    "RetrieverFactory",
    "load_retriever_factory",
]

RETRIEVER_ENV = "JETAGENT_MEMORY_RETRIEVER"
"""The environment variable naming a retriever factory as ``module:callable``."""


@runtime_checkable
class Retriever(Protocol):
    """Ranks one fixed set of documents against queries."""

    def index(self, docs: Sequence[str]) -> None:
        """Take the documents to search; called once, before any ``search``."""
        ...

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """At most ``k`` ``(position in docs, score)`` pairs, best first.

        Only documents that match at all: an unrelated query gives an empty list. Once
        indexed, a retriever may be searched from several threads at once.
        """
        ...


RetrieverFactory = Callable[[], Retriever]
"""Makes a new, empty retriever (one per indexed set of memories)."""


class BM25Retriever:
    """Okapi BM25 over word tokens (``bm25s``), English stop words and Snowball stemming."""

    def __init__(
        self,
        *,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        language: str | None = "english",
    ) -> None:
        """``language`` picks the stop words and the stemmer; ``None`` keeps every word as is."""
        self._model: Any = bm25s.BM25(k1=k1, b=b, method=method)
        self._stopwords: str | list[str] = "en" if language == "english" else []
        self._stemmer: Any = Stemmer.Stemmer(language) if language else None
        self._size = 0

    def _tokens(self, texts: list[str]) -> Any:
        return bm25s.tokenize(
            texts,
            stopwords=self._stopwords,
            stemmer=self._stemmer,
            show_progress=False,
        )

    def index(self, docs: Sequence[str]) -> None:
        """Build the BM25 index of ``docs``."""
        self._size = len(docs)
        if docs:
            self._model.index(self._tokens(list(docs)), show_progress=False)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        """The best ``k`` documents with a positive BM25 score, best first."""
        if self._size == 0 or k < 1:
            return []
        tokens = self._tokens([query])
        if not tokens.ids or not tokens.ids[0]:
            return []  # the query was only stop words
        positions, scores = self._model.retrieve(
            tokens, k=min(k, self._size), show_progress=False, n_threads=0
        )
        return [
            (int(position), float(score))
            for position, score in zip(positions[0], scores[0], strict=True)
            if score > 0
        ]


def load_retriever_factory(entry: str | None = None) -> RetrieverFactory:
    """The factory ``entry`` (``module:callable``) names, else ``JETAGENT_MEMORY_RETRIEVER``'s,
    else :class:`BM25Retriever`.

    Checked at once (the worker's start), so a bad setting stops the worker with a clear
    :class:`~jetagent.errors.ConfigError` rather than failing every ``recall``.
    """
    entry = entry if entry is not None else os.environ.get(RETRIEVER_ENV, "")
    entry = entry.strip()
    if not entry:
        return BM25Retriever
    if ":" not in entry:
        raise ConfigError(f"{RETRIEVER_ENV}={entry!r}: expected module:callable")
    factory: Any = load(entry, setting=RETRIEVER_ENV)
    if not callable(factory):
        raise ConfigError(f"{RETRIEVER_ENV}={entry!r} is not callable")
    probe = factory()
    if not isinstance(probe, Retriever):
        raise ConfigError(
            f"{RETRIEVER_ENV}={entry!r} made {type(probe).__name__}, which lacks "
            "index(docs) and search(query, k)"
        )
    result: RetrieverFactory = factory
    return result
