"""API keys: read at call time from the variable the catalog names, and kept out of every
message, log line and repr.

A key is never stored on a provider object (so no repr can show it). During a call it is
a ``Secret``, whose repr is redacted, so even an error reporter that records the local
variables of every frame in a traceback (Sentry does by default) sees no key; the plain
text exists only inside the expression that builds the request headers. Any text that
may echo the key — an httpx error that quotes a header, a provider's error body that
quotes the key back — passes through a ``Redactor``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from urllib.parse import quote

from jetagent.errors import PermanentError
from jetagent.models import ModelConfig

REDACTED = "[REDACTED]"
"""What replaces a key in any text jetagent produces."""

# Shorter "keys" (a placeholder like "x" for a local vLLM) are not secrets, and
# redacting them would garble every message.
_MIN_SECRET_LEN = 4


class Secret:
    """A key that never shows itself: ``repr`` and ``str`` are redacted."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The key itself; use it only inside the expression that needs it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    __str__ = __repr__


class Redactor:
    """Replaces every spelling of one secret in text; its repr shows none of them."""

    __slots__ = ("_forms",)

    def __init__(self, secret: Secret | None) -> None:
        self._forms = secret_forms(secret.reveal() if secret is not None else None)

    def __call__(self, text: str) -> str:
        return redact(text, self._forms)

    def __repr__(self) -> str:
        return "Redactor(...)"


def read_api_key(model: ModelConfig) -> Secret | None:
    """The key for ``model`` from the environment variable named by ``api_key_env``.

    ``None`` when the model needs no key (a local server). A missing variable is a
    ``PermanentError`` naming the variable, never a value, and so is a key with
    characters no HTTP header may carry. Surrounding whitespace is dropped: a key file
    written with ``echo`` ends in a newline.
    """
    if not model.api_key_env:
        return None
    value = os.environ.get(model.api_key_env, "").strip()
    if not value:
        raise PermanentError(
            f"model {model.name} needs an API key in the environment variable "
            f"{model.api_key_env}, which is not set",
            details={"usage_status": "not_reported"},
        )
    if not all(" " <= c <= "~" for c in value):
        # Sent anyway, h11 would refuse the header and quote the value in an error that
        # httpcore logs at DEBUG level, beyond the reach of our redaction.
        raise PermanentError(
            f"the API key in {model.api_key_env} contains control or non-ASCII "
            "characters, which an HTTP header cannot carry",
            details={"usage_status": "not_reported"},
        )
    return Secret(value)


def secret_forms(key: str | None) -> tuple[str, ...]:
    """Every spelling of ``key`` that may appear in text: as is, escaped as in a Python
    repr of the str or of its bytes (httpx/h11 quote bad header values that way), JSON
    escaped, and URL-quoted. Longest first, so a longer form is replaced whole."""
    if key is None or len(key) < _MIN_SECRET_LEN:
        return ()
    forms = {
        key,
        repr(key)[1:-1],
        repr(key.encode("utf-8", "backslashreplace"))[2:-1],
        json.dumps(key)[1:-1],
        quote(key, safe=""),
    }
    return tuple(sorted((f for f in forms if len(f) >= _MIN_SECRET_LEN), key=len, reverse=True))


def redact(text: str, forms: Sequence[str]) -> str:
    """``text`` with every form of the secret replaced by ``[REDACTED]``."""
    for form in forms:
        text = text.replace(form, REDACTED)
    return text
