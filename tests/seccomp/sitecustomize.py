"""Started with this folder on PYTHONPATH, a Python process confines itself as ``skyrelay@.service`` does.

``SKYRELAY_TEST_SYSCALLS`` names a file of allowed system calls (``@system-service`` expanded by
``systemd-analyze syscall-filter``); every other call kills the process (SIGSYS), which is stricter than
the unit's ``SystemCallErrorNumber=EPERM``: a daemon that survives this would survive the unit. The
umask becomes the unit's ``UMask=0027``. libseccomp is called through ctypes (no dependency).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_ALLOW = 0x7FFF0000


def _confine(listing: str) -> None:
    library = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    seccomp = ctypes.CDLL(library, use_errno=True)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    context = seccomp.seccomp_init(SCMP_ACT_TRAP)
    if not context:
        raise OSError("seccomp_init failed")
    with open(listing) as names:
        for name in names.read().split():
            number = seccomp.seccomp_syscall_resolve_name(name.encode())
            if number >= 0:
                seccomp.seccomp_rule_add(context, SCMP_ACT_ALLOW, number, 0)
    if seccomp.seccomp_load(context) != 0:
        raise OSError(ctypes.get_errno(), "seccomp_load failed")


def _confined() -> bool:
    """Whether a filter is on already: a child (a process pool's worker) inherits its parent's, as under systemd."""
    with open("/proc/self/status") as status:
        return any(line.split() == ["Seccomp:", "2"] for line in status)


if os.environ.get("SKYRELAY_TEST_SYSCALLS") and not _confined():
    os.umask(0o027)
    _confine(os.environ["SKYRELAY_TEST_SYSCALLS"])
