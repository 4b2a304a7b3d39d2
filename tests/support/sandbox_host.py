"""A sandbox parent that runs as an unprivileged user, as the Dockerfile's service does.

Tests run as root; the sandbox has to hold where it is deployed, as a plain user. The
fixture starts this script as that user with the system's Python (the virtualenv's
interpreter lives where other users cannot read) and the repository plus the
virtualenv's site-packages on the path. It reads one JSON request per line on stdin and
answers one JSON line on stdout:

    {"code": "...", "guards": true, "limits": {...}, "stdin": ""}  -> a SandboxResult
    {"protections": true}                                          -> protections()
    {"whoami": true}   -> this process's pid, uid and the descriptor it holds open on purpose

It keeps an inheritable descriptor on a secret file open, and its environment holds a
secret, so tests can check that neither reaches a snippet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys


def main() -> None:
    root, site_packages, secret_file = sys.argv[1:4]
    sys.path[:0] = [root, os.path.join(root, "platform"), site_packages]
    from capabilities.tools import sandbox

    opened = os.open(secret_file, os.O_RDONLY)
    secret_fd = os.dup2(opened, 100)  # inheritable, as a careless library might leave one
    os.close(opened)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            request = json.loads(line)
            answer: object
            if request.get("protections"):
                answer = sandbox.protections()
            elif request.get("whoami"):
                answer = {"pid": os.getpid(), "uid": os.getuid(), "secret_fd": secret_fd}
            else:
                limits = sandbox.SandboxLimits(**request.get("limits", {}))
                result = await sandbox._run(
                    request["code"],
                    limits=limits,
                    stdin=request.get("stdin", ""),
                    guards=request.get("guards", True),
                )
                answer = dataclasses.asdict(result)
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
