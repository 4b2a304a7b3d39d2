"""The ``comparison`` suite's workload: one multi-step agent session, scripted per seed.

A session is an instruction naming its id and seed. The scripted model
(``bench._comparison_server``) plans it from the seed alone: 1-4 reasoning turns; every
turn but the last asks for 1-2 tool calls, each a slow I/O lookup (1-2 s, served by the
same server's ``/lookup``) or, less often, a CPU-bound ``crunch`` (~300 ms of Python);
the last turn answers ``Final answer: <sum of every tool result it was shown>``. Tool
results are pure functions of their arguments, so the bench knows every session's
right answer without running anything (:func:`expected_answer`), and an answer that
differs means a tool result was lost, doubled or mixed up: a *corrupted* session.

Provider latency is lognormal (median 250 ms); faults (a hung call, a 429 with
``retry-after``) are drawn per (session, turn, attempt), so both architectures meet the
same faults on the same logical calls.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "Call",
    "Fault",
    "Params",
    "Session",
    "call_value",
    "crunch_value",
    "expected_answer",
    "fault_for",
    "instruction",
    "latency_for",
    "lookup_value",
    "parse_instruction",
    "plan",
    "schedule",
]

_INSTRUCTION = re.compile(r"session (?P<sid>[A-Za-z0-9_-]+) seed (?P<seed>\d+)")


@dataclass(frozen=True, kw_only=True)
class Params:
    """Every knob of the workload (written to BENCHMARKS.md with the results)."""

    sessions: int = 300
    """Sessions per run."""
    median_latency_s: float = 0.25
    """Median provider latency (lognormal)."""
    latency_sigma: float = 0.5
    """Sigma of the log of the provider latency (p99 = median * e^(2.33 sigma) = 0.8 s)."""
    max_turns: int = 4
    """Reasoning turns per session: uniform in 1..max_turns."""
    max_calls_per_turn: int = 2
    """Tool calls per tool turn: uniform in 1..this."""
    crunch_share: float = 0.05
    """Share of tool calls that are the CPU-bound ``crunch`` (the rest: slow lookups).
    Small on purpose: 300 ms of CPU per call at 30 sessions/s would need more cores
    than the 2 this box has (see the suite's notes)."""
    lookup_s: tuple[float, float] = (1.0, 2.0)
    """Slow I/O tool time, uniform in this range."""
    crunch_iterations: int = 4_000_000
    """Loop iterations of one ``crunch`` (calibrated to ~300 ms at the suite's start)."""
    hang_p: float = 0.03
    """Probability that one provider call hangs (no answer until the client gives up)."""
    rate_limit_p: float = 0.03
    """Probability that one provider call is answered 429 with ``retry-after``."""
    retry_after_s: float = 1.0
    """The ``retry-after`` of those 429s."""
    faults: bool = True
    """Faults on (``False``: the intrinsic floor)."""
    time_scale: float = 1.0
    """Multiplies every latency and tool time (the quick smoke run uses 0.1)."""
    input_per_mtok: float = 0.15
    """USD per million input tokens (the scripted model's price, both architectures)."""
    output_per_mtok: float = 0.60

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Params:
        low, high = data["lookup_s"]
        return cls(**{**data, "lookup_s": (float(low), float(high))})

    def without_faults(self) -> Params:
        return _replace(self, faults=False)

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def _replace(params: Params, **changes: Any) -> Params:
    return Params(**{**asdict(params), **changes})


@dataclass(frozen=True)
class Call:
    """One tool call the scripted model asks for."""

    tool: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Session:
    sid: str
    seed: int
    arrival_s: float
    """Seconds after the run's start at which the session arrives (Poisson)."""


@dataclass(frozen=True)
class Fault:
    kind: str
    """``"ok"``, ``"hang"`` or ``"429"``."""


def _rng(*parts: object) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random: the same in every process.
    return random.Random(":".join(str(p) for p in parts))


def instruction(session: Session) -> str:
    return (
        f"This is session {session.sid} seed {session.seed}. Look the figures up, crunch "
        "what needs crunching, and report the total."
    )


def parse_instruction(text: str) -> tuple[str, int] | None:
    found = _INSTRUCTION.search(text)
    return None if found is None else (found["sid"], int(found["seed"]))


def plan(seed: int, params: Params) -> list[list[Call]]:
    """The tool calls of every turn but the last (the last answers): ``len + 1`` turns."""
    rng = _rng("plan", seed)
    turns = rng.randint(1, params.max_turns)
    out: list[list[Call]] = []
    for turn in range(turns - 1):
        calls = []
        for i in range(rng.randint(1, params.max_calls_per_turn)):
            ref = f"{seed}-{turn}-{i}"
            if rng.random() < params.crunch_share:
                salt = rng.randint(1, 10_000)
                arguments = {"n": params.crunch_iterations, "salt": salt, "ref": ref}
                calls.append(Call("crunch", arguments))
            else:
                low, high = params.lookup_s
                delay_ms = round(rng.uniform(low, high) * 1000 * params.time_scale)
                key = f"k{rng.randint(0, 1_000_000)}"
                calls.append(Call("slow_lookup", {"key": key, "delay_ms": delay_ms, "ref": ref}))
        out.append(calls)
    return out


def lookup_value(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 1000


def crunch_value(n: int, salt: int) -> int:
    """What ``crunch(n, salt)`` returns, in closed form: sum of squares of salt..salt+n-1."""

    def squares(k: int) -> int:  # 0² + … + (k-1)²
        return (k - 1) * k * (2 * k - 1) // 6

    return (squares(salt + n) - squares(salt)) % 1000


def call_value(call: Call) -> int:
    if call.tool == "crunch":
        return crunch_value(int(call.arguments["n"]), int(call.arguments["salt"]))
    return lookup_value(str(call.arguments["key"]))


def expected_answer(seed: int, params: Params) -> str:
    total = sum(call_value(c) for turn in plan(seed, params) for c in turn)
    return f"Final answer: {total}"


def latency_for(seed: int, turn: int, attempt: int, params: Params) -> float:
    """The provider's latency for one call, in seconds."""
    rng = _rng("latency", seed, turn, attempt)
    mu = math.log(params.median_latency_s)
    return rng.lognormvariate(mu, params.latency_sigma) * params.time_scale


def fault_for(seed: int, turn: int, attempt: int, params: Params) -> Fault:
    if not params.faults:
        return Fault("ok")
    draw = _rng("fault", seed, turn, attempt).random()
    if draw < params.hang_p:
        return Fault("hang")
    if draw < params.hang_p + params.rate_limit_p:
        return Fault("429")
    return Fault("ok")


def schedule(run: str, rate: float, params: Params) -> list[Session]:
    """``params.sessions`` sessions arriving as a Poisson process of ``rate`` per second.

    Seeds depend only on the position, so every run does the same logical work; ids
    carry the run's name so runs on one platform never share a workflow id.
    """
    rng = _rng("arrivals", rate, params.sessions)
    at = 0.0
    out = []
    for i in range(params.sessions):
        out.append(Session(sid=f"{run}-{i:04d}", seed=1000 + i, arrival_s=at))
        at += rng.expovariate(rate)
    return out
