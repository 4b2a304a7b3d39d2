"""The nats-py client with a faster message-header parser.

Every stored record read back carries about ten headers (the expected-sequence checks
it was written with, plus those direct get adds), and nats-py's parser spends more than
half of a notification read in a per-character whitespace scan of each header name.
This parser keeps its semantics (UTF-8 values with replacement, ASCII names without
whitespace, lines without a colon skipped) in a few string operations per line; it
raised the notification read rate from ~36,000 to ~57,000 per second here (bench/).
"""

from __future__ import annotations

from nats.aio.client import Client

__all__ = ["FastHeaderClient"]


class FastHeaderClient(Client):
    """``nats.aio.client.Client`` whose header parsing is cheaper (same results)."""

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in raw.decode("utf-8", "replace").split("\r\n"):
            name, sep, value = line.partition(":")
            if not sep:
                continue
            key = name.strip()
            if not key or not key.isascii() or " " in key or "\t" in key or "\ufffd" in key:
                continue
            out[key] = value.strip()
        return out
