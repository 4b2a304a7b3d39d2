"""The seccomp-bpf filter of one sandbox run, compiled by libseccomp in the service.

The service compiles the filter (pyseccomp over libseccomp: the architecture checks, the
x32 trap and the argument comparisons are libseccomp's, not ours) and hands the raw BPF
program to the snippet process, which loads it before any snippet code runs. Compiling
costs ~0.2 ms; importing pyseccomp costs ~25 ms, which is why the snippet process does
not do it itself. The filter names the snippet's own pid, so it is built per run.

Default allow, with a deny list: the snippet process is a plain interpreter whose needs
are broad (files in its folder, memory, time, pipes), and what must never happen is
short and well known. Every denial answers EPERM (never kills), so a snippet gets an
`OSError` it can report; a syscall of a foreign architecture kills the process.
"""

from __future__ import annotations

import errno
import functools
import os
import struct

import pyseccomp as seccomp  # type: ignore[import-untyped]

__all__ = ["filter_program"]

_CLONE_THREAD = 0x00010000
_AF_UNIX = 1
# A socket type is its low 4 bits; SOCK_STREAM (1) is the only one with none of these.
_SOCK_TYPE_BITS_BUT_STREAM = (0x2, 0x4, 0x8)
_LOW_32_BITS = 0xFFFF_FFFF
_F_SETOWN, _F_SETOWN_EX = 8, 15
_FALLOC_FL_KEEP_SIZE = 1
_PR_SET_PDEATHSIG = 1
_TIOCSTI, _FIOSETOWN, _SIOCSPGRP = 0x5412, 0x8901, 0x8902
# x86_64 numbers 512 and up are x32-only (refused as a foreign ABI) or unassigned.
_SYSCALL_NUMBERS = 512

# Never allowed: new processes and programs, other processes' memory and signals through
# descriptors, kernel facilities that bypass seccomp itself (io_uring) or reach the host
# (mounts, namespaces, keys, modules, BPF, perf, clocks), handle-based opens that skip
# path checks, and raising resource limits.
_DENIED = (
    "execve",
    "execveat",
    "fork",
    "vfork",
    "socket",
    # a socketpair's end could be bound, or connected to a listener: nothing to name
    "connect",
    "bind",
    "listen",
    "accept",
    "accept4",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "process_mrelease",
    "kcmp",
    "pidfd_open",
    "pidfd_send_signal",
    "pidfd_getfd",
    "tkill",
    "setrlimit",
    "setpriority",
    "ioprio_set",
    "migrate_pages",
    "move_pages",
    "get_robust_list",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "memfd_create",  # memory outside the address-space limit, up to open files x file size
    "memfd_secret",
    "fanotify_init",
    "fanotify_mark",
    # watches need only a path and read permission, which Landlock does not check:
    # names created in other runs' folders, the worker's reads of its files
    "inotify_add_watch",
    # Landlock does not cover modes, owners, times or extended attributes: by path, the
    # worker's files outside the snippet's folder would be its to open to every user,
    # give away, retime or tag. Through a descriptor, whose opening Landlock checked,
    # they stay allowed (fchmod, fchown, futimens, fsetxattr); the snippet process's
    # os.chmod and os.utime take that route.
    "chmod",
    "fchmodat",
    "fchmodat2",
    "utime",
    "utimes",
    "futimesat",
    "chown",
    "lchown",
    "fchownat",
    "setxattr",
    "lsetxattr",
    "removexattr",
    "lremovexattr",
    "keyctl",
    "add_key",
    "request_key",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "open_by_handle_at",
    "name_to_handle_at",
    # System V IPC objects outlive the process: memory outside every limit, and a
    # mailbox that the next run (the same uid) or any user can open by its key
    "shmget",
    "shmat",
    "shmctl",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "semget",
    "semop",
    "semtimedop",
    "semctl",
    "mknod",
    "mknodat",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "syslog",
    "quotactl",
    "vhangup",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "personality",
    "uselib",
)
# Calls that name a process: allowed on itself (pid 0) only.
_ONLY_ITSELF = ("sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr")


def filter_program(*, pid: int, threads: bool) -> bytes:
    """The BPF program for the snippet process `pid`; `threads` allows clone(CLONE_THREAD).

    Compiled once per `threads` with a placeholder pid, then the placeholder's 32-bit
    constants are replaced by `pid` (each BPF instruction is code:u16 jt:u8 jf:u8 k:u32):
    ~20 µs instead of ~0.8 ms a run.
    """
    template, places = _template(threads)
    program = bytearray(template)
    for offset in places:
        struct.pack_into("=I", program, offset, pid)
    return bytes(program)


_PLACEHOLDER = 0x7E5A_1D00  # above any pid (pid_max <= 2**22) and any constant we use


@functools.cache
def _template(threads: bool) -> tuple[bytes, tuple[int, ...]]:
    program = _compile(pid=_PLACEHOLDER, threads=threads)
    places = tuple(
        offset + 4
        for offset in range(0, len(program), 8)
        if struct.unpack_from("=I", program, offset + 4)[0] == _PLACEHOLDER
    )
    if not places:
        raise RuntimeError("libseccomp's program does not name the pid as expected")
    return program, places


def _unknown_syscalls() -> list[int]:
    unknown = []
    for number in range(_SYSCALL_NUMBERS):
        try:
            seccomp.resolve_syscall(seccomp.Arch.NATIVE, number)
        except ValueError:
            unknown.append(number)
    return unknown


def _compile(*, pid: int, threads: bool) -> bytes:
    deny = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    rules.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    for name in _DENIED:
        rules.add_rule(deny, name)
    # New processes: only threads, and only when allowed; clone3 passes its flags in
    # memory a filter cannot read, so it answers ENOSYS and the C library falls back to
    # clone, whose flags it can.
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    if threads:
        rules.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_THREAD, 0))
    else:
        rules.add_rule(deny, "clone")
    # UNIX stream pairs (asyncio's self-pipe) reach nothing outside; socket() is denied.
    # A datagram pair is not: sendto() names any socket file, which Landlock does not
    # check (/dev/log, a local service's socket).
    rules.add_rule(deny, "socketpair", seccomp.Arg(0, seccomp.NE, _AF_UNIX))
    for bit in _SOCK_TYPE_BITS_BUT_STREAM:
        rules.add_rule(deny, "socketpair", seccomp.Arg(1, seccomp.MASKED_EQ, bit, bit))
    # Signals: to its own pid only (kill, tgkill, sigqueue), so also no process groups.
    for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        rules.add_rule(deny, name, seccomp.Arg(0, seccomp.NE, pid))
    # Reading its own limits is fine (prlimit64(0, ..., NULL, ...)); any other use is not.
    rules.add_rule(deny, "prlimit64", seccomp.Arg(0, seccomp.NE, 0))
    rules.add_rule(deny, "prlimit64", seccomp.Arg(2, seccomp.NE, 0))
    for name in _ONLY_ITSELF:
        rules.add_rule(deny, name, seccomp.Arg(0, seccomp.NE, 0))
    # The snippet process dies with the service; cleared, it would outlive a killed
    # worker, asleep and unbounded by any clock.
    pdeathsig = seccomp.Arg(0, seccomp.MASKED_EQ, _LOW_32_BITS, _PR_SET_PDEATHSIG)
    rules.add_rule(deny, "prctl", pdeathsig)
    # Blocks reserved past the end of a file do not grow it, so RLIMIT_FSIZE never
    # applies: a gigabyte in ~25 ms, between two looks of the service at the folder.
    keep_size = seccomp.Arg(1, seccomp.MASKED_EQ, _FALLOC_FL_KEEP_SIZE, _FALLOC_FL_KEEP_SIZE)
    rules.add_rule(deny, "fallocate", keep_size)
    # utimensat(fd, NULL, ...) is futimens; any path is refused (see chmod above).
    rules.add_rule(deny, "utimensat", seccomp.Arg(1, seccomp.NE, 0))
    # An owner for SIGIO is a signal to another process that no kill() carries (and
    # F_SETSIG picks the signal); typing into a terminal it might have been handed. The
    # kernel reads these commands as 32 bits: the comparison must ignore the upper half.
    for command in (_F_SETOWN, _F_SETOWN_EX):
        rules.add_rule(deny, "fcntl", seccomp.Arg(1, seccomp.MASKED_EQ, _LOW_32_BITS, command))
    for request in (_TIOCSTI, _FIOSETOWN, _SIOCSPGRP):
        rules.add_rule(deny, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, _LOW_32_BITS, request))
    # Default allow must not mean "allow what libseccomp has not heard of": a newer
    # kernel's syscalls (setxattrat, open_tree_attr, file_setattr ...) answer ENOSYS, as
    # on a kernel that lacks them, so the C library falls back to what is filtered.
    for number in _unknown_syscalls():
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), number)
    with os.fdopen(os.memfd_create("jetagent-seccomp"), "w+b") as program:
        rules.export_bpf(program)
        program.seek(0)
        return program.read()
