"""The examples every ``jetagent … --help`` ends with, in one place.

Each command's help shows what a user types first; a test parses every example against
the command's real options (``tests/test_cli_help.py``) and fails for a command
``jetagent --help`` lists without one. A new command adds its lines here: kept apart from
the command modules so that the help reads as one voice and the modules stay about what
the commands do.
"""

from __future__ import annotations

import typer
from rich.markup import escape

__all__ = ["EXAMPLES", "TOP_LEVEL", "add_examples", "epilog"]

EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "up": [
        ("jetagent up", "NATS on 127.0.0.1:4222, then every service"),
        ("jetagent up --port 0 --data-dir /tmp/ja", "beside another server: any free port"),
        ("NATS_URL=nats://127.0.0.1:4222 jetagent up", "the services only, on your own NATS"),
    ],
    "orchestrator": [
        ("jetagent orchestrator", "one more replica; start as many as you like"),
    ],
    "worker": [
        ("jetagent worker reasoning", "one replica of the reasoning capability"),
        ("jetagent worker tools --concurrency 32", "a tools worker running 32 steps at once"),
        ("jetagent worker tools --only crunch", "the pool of a dedicated tool"),
    ],
    "gateway": [
        ("JETAGENT_GATEWAY_TOKENS=s3cret-token=default jetagent gateway", "HTTP on :8080"),
    ],
    "provision": [
        ("jetagent provision", "create or check every stream, consumer and bucket"),
    ],
    "submit": [
        ('jetagent submit "What is 6 * 7?" --wait', "submit and follow it to its answer"),
        ('jetagent submit "Summarise the notes" --tenant acme --token-cap 4000', ""),
    ],
    "watch": [
        ("jetagent watch WORKFLOW_ID", "its events as they happen, until it ends"),
        ("jetagent watch WORKFLOW_ID --tokens --timeout 60", "with the model's text"),
    ],
    "schemas": [
        ("jetagent schemas", "write schemas/"),
        ("jetagent schemas --check", "fail when schemas/ is stale (CI)"),
    ],
    "demo": [
        ("jetagent demo", "its own server on a free port; four workflows; their costs"),
    ],
    "inspect": [
        ("jetagent inspect WORKFLOW_ID", "status, steps, models, tokens and cost"),
        ("jetagent inspect WORKFLOW_ID --json", "the raw session view"),
    ],
    "replay": [
        ("jetagent replay WORKFLOW_ID", "its history, from the log"),
        ("jetagent replay WORKFLOW_ID --verify", "re-decide every input and compare"),
        ("jetagent replay 8c1aaa02 --at 4", "the state folded up to stream sequence 4"),
        ("jetagent replay 8c1aaa02 --json", "the history as one JSON document"),
    ],
    "list": [
        ("jetagent list --status terminated --since 2h", "what ended without an answer"),
        ("jetagent list --tenant acme --capability tools --cost-above 0.01", ""),
        ("jetagent list --since 2026-12-01 --until 2026-12-02 --json", "one day, as JSON"),
    ],
    "status": [
        ("jetagent status", "streams, consumers, workers, projection lag, circuits"),
        ("jetagent status --json", "the same as one JSON document"),
    ],
    "tail": [
        ("jetagent tail", "every workflow event as it happens"),
        ("jetagent tail --tenant acme", "one tenant's"),
    ],
    "dlq": [
        ("jetagent dlq", "the newest dead letters and why"),
        ("jetagent dlq --limit 100", ""),
    ],
    "projections": [
        ("jetagent projections run", "session views and /metrics"),
        ("jetagent projections rebuild", "from sequence 0 (stop the service first)"),
    ],
    "projections run": [
        ("jetagent projections run", "session views in JA_SESSIONS, metrics on :9464"),
        ("JETAGENT_METRICS_PORT=9500 jetagent projections run", "metrics on another port"),
    ],
    "projections rebuild": [
        ("jetagent projections rebuild", "replay every stream into fresh views and totals"),
    ],
}
"""Per command (a sub-command as ``"group command"``): (command line, what it does)."""

TOP_LEVEL: list[tuple[str, str]] = [
    ("jetagent up", "terminal 1: the platform on nats://127.0.0.1:4222"),
    ('jetagent submit "What is 6 * 7?" --wait', "terminal 2: finds it without NATS_URL"),
    ("jetagent tail", "every workflow event as it happens"),
]


def epilog(examples: list[tuple[str, str]]) -> str:
    """The ``Examples:`` section: one line per example (typer keeps single line breaks
    of an epilog and collapses indentation, so a comment goes after the command)."""
    lines = ["[bold]Examples:[/]"]
    width = max((len(command) for command, comment in examples if comment), default=0)
    for command, comment in examples:
        line = escape(command)
        if comment:
            line += " " * (width - len(command)) + f"   [dim]# {escape(comment)}[/]"
        lines.append(line)
    return "\n".join(lines)


def add_examples(app: typer.Typer) -> None:
    """Give every command of ``app`` (and of its groups) its ``Examples:`` epilog."""
    _add(app, prefix="")


def _add(app: typer.Typer, prefix: str) -> None:
    for command in app.registered_commands:
        name = command.name or (command.callback.__name__ if command.callback else None) or ""
        key = f"{prefix}{name.replace('_', '-')}"
        if key in EXAMPLES:
            command.epilog = epilog(EXAMPLES[key])
    for group in app.registered_groups:
        sub = group.typer_instance
        if sub is None:
            continue
        group_name = group.name or sub.info.name
        if isinstance(group_name, str) and group_name:
            if f"{prefix}{group_name}" in EXAMPLES:
                group.epilog = epilog(EXAMPLES[f"{prefix}{group_name}"])
            _add(sub, prefix=f"{prefix}{group_name} ")
        else:
            _add(sub, prefix=prefix)  # a nameless group's commands join this level
