"""The sandbox run's working folder, seen from the service: how full it is, and removing it.

Both walk a tree the snippet built and may have made hostile — nested past ``PATH_MAX``,
made unreadable, ten thousand entries deep — and both run in threads, never on the event
loop (looking at a folder of 10,000 entries costs ~100 ms, deleting it a second).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
from collections.abc import Callable
from typing import Any

__all__ = ["folder_usage", "remove_tree", "remove_tree_off_loop"]

_WALKERS = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="sandbox-folder")
_MAX_DEPTH = 64
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


async def folder_usage(root: str, max_entries: int) -> tuple[int, int]:
    """`_usage` in a thread."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_WALKERS, _usage, root, max_entries)


def _usage(root: str, max_entries: int) -> tuple[int, int]:
    """Bytes on disk and entries under `root`, counting stops past `max_entries`.

    Walked by descriptor, never by path: a snippet can nest folders past PATH_MAX,
    where a path no longer opens, and would hide what they hold. A tree deeper than
    `_MAX_DEPTH` counts as full (a descriptor stays open per level).
    """
    try:
        try:
            top = os.open(root, _DIRECTORY)
        except PermissionError:
            os.chmod(root, 0o700)  # the service made it; the snippet cannot move it
            top = os.open(root, _DIRECTORY)
    except OSError:
        return 0, 0
    usage = [0, 0]
    try:
        _count(top, usage, max_entries, depth=0)
    finally:
        os.close(top)
    return usage[0], usage[1]


def _count(folder: int, usage: list[int], max_entries: int, *, depth: int) -> None:
    if depth > _MAX_DEPTH:
        usage[1] = max_entries + 1
        return
    try:
        listing = os.scandir(folder)
    except OSError:
        return
    with listing:
        for entry in listing:
            usage[1] += 1
            if usage[1] > max_entries:
                return
            try:
                usage[0] += entry.stat(follow_symlinks=False).st_blocks * 512
                if not entry.is_dir(follow_symlinks=False):
                    continue
                child = _open_folder(folder, entry.name)
            except OSError:
                continue
            try:
                _count(child, usage, max_entries, depth=depth + 1)
            finally:
                os.close(child)
            if usage[1] > max_entries:
                return


def _open_folder(parent: int, name: str) -> int:
    try:
        return os.open(name, _DIRECTORY, dir_fd=parent)
    except PermissionError:
        # the snippet made its folder unreadable to hide what it holds; the service
        # owns it and takes the permission back, on the folder itself (O_PATH without
        # following a link, chmod through the descriptor), never on a link's target
        handle = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY, dir_fd=parent)
        try:
            os.chmod(f"/proc/self/fd/{handle}", 0o700)
        finally:
            os.close(handle)
        return os.open(name, _DIRECTORY, dir_fd=parent)


async def remove_tree_off_loop(path: str) -> None:
    """`remove_tree` in a thread: a folder of 10,000 entries takes a second to delete.
    Cancelling the wait does not stop the deletion."""
    await asyncio.get_running_loop().run_in_executor(_WALKERS, remove_tree, path)


def remove_tree(path: str) -> None:
    """Delete `path` and everything under it, whatever modes the snippet set."""

    def make_writable(function: Callable[..., Any], failed: str, _: object) -> None:
        # a snippet may chmod its own folders to 0; the service (same user) still has to
        # delete them
        os.chmod(os.path.dirname(failed), 0o700)
        os.chmod(failed, 0o700)
        function(failed)

    try:
        shutil.rmtree(path, onerror=make_writable)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
