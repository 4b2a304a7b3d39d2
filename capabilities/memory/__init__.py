"""The memory capability (``jetagent worker memory``): agents remember text and recall it.

Two tools, served by workers of the ``memory`` capability (consumer ``cap-memory``)::

    remember(text, scope="session" | "tenant", tags=[])  -> {id, scope, remembered_at}
    recall(query, scope="session" | "tenant" | "both", limit=5)
        -> [{text, score, scope, tags, remembered_at}, ...]   best first

**Scopes.** ``tenant``: every session of the tenant. ``session``: the workflow's session —
the request's ``session_context.session_id`` when it has one, else the workflow itself
(its id, the request id, is then the session id, so a later request continues it by
passing that id as its ``session_id``). Both come with the step, as every capability's
inputs do: the orchestrator puts the session in each tool step's input (``session_id``)
and the tenant on the step, and the tool reads nothing else of the workflow. A tenant
never sees another tenant's memories: the tenant is the first token of every key, and
every read is a filter under it.

**Storage.** The ``<PREFIX>_MEMORY`` KV bucket, one key per memory —
``<tenant>.t.<id>`` (tenant scope) and ``<tenant>.s-<session_id>.<id>`` (session scope).
Texts above the payload threshold go to the object store by reference. The id hashes
(workflow id, tool call id, text) and the key is created write-once, so a redelivered
step stores nothing twice.

**Retrieval.** BM25 (``bm25s``; stop words, Snowball stemming) by default. Any ranking
that implements :class:`Retriever` (``index(docs)``, ``search(query, k)``) — embeddings,
say — plugs in with ``JETAGENT_MEMORY_RETRIEVER=module:factory`` (a callable returning a
new retriever) or ``memory_capability(retriever=...)``. Each worker caches one index per
(tenant, scope) and rebuilds it when the scope's newest change on the server is newer
than the one it has seen (a revision check per ``recall``).
"""

from capabilities.memory._capability import CAPABILITY as CAPABILITY
from capabilities.memory._capability import memory_capabilities as memory_capabilities
from capabilities.memory._capability import memory_capability as memory_capability
from capabilities.memory._capability import memory_tools as memory_tools
from capabilities.memory._retrieval import RETRIEVER_ENV as RETRIEVER_ENV
from capabilities.memory._retrieval import BM25Retriever as BM25Retriever
from capabilities.memory._retrieval import Retriever as Retriever
from capabilities.memory._retrieval import RetrieverFactory as RetrieverFactory
from capabilities.memory._retrieval import load_retriever_factory as load_retriever_factory
from capabilities.memory._store import MemoryRecord as MemoryRecord
from capabilities.memory._store import MemoryStore as MemoryStore
from capabilities.memory._store import Recalled as Recalled
from capabilities.memory._store import Remembered as Remembered
from capabilities.memory._store import memory_id as memory_id
from capabilities.memory._store import memory_key as memory_key

__all__ = [
    "CAPABILITY",
    "RETRIEVER_ENV",
    "BM25Retriever",
    "MemoryRecord",
    "MemoryStore",
    "Recalled",
    "Remembered",
    "Retriever",
    "RetrieverFactory",
    "load_retriever_factory",
    "memory_capabilities",
    "memory_capability",
    "memory_id",
    "memory_key",
    "memory_tools",
]
