"""Child processes never outlive the command that started them: a kill -9 of `carebot <cmd>` takes its
helpers (multiprocessing pools, megatron-core's checkpoint writers and their Manager) with it, instead of
leaving them reparented to PID 1.

Linux asks the kernel to do it (prctl PR_SET_PDEATHSIG): every forked child gets it through an at-fork hook
(`children_die_with_me`, set once by `carebot.cli.run`); a spawned child (fork + exec, which runs no Python
hook) calls `die_with_parent` as its pool or manager initializer. A training rank that torchrun started dies with
torchrun's agent (`die_with_launcher`, run when `carebot` is first imported, before torch or megatron-core), so a
kill -9 of torchrun does not leave its ranks training under PID 1. Elsewhere all of them are no-ops."""
from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
_hooked = False


def die_with_parent(parent: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent (`parent`, default: the multiprocessing parent of a
    spawned child) exits, and exit now if it already has."""
    if not sys.platform.startswith("linux"):
        return
    if parent is None:
        import multiprocessing as mp

        spawned_by = mp.parent_process()  # a spawned child takes a while to get here: its parent may be gone
        parent = spawned_by.pid if spawned_by is not None and spawned_by.pid else os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the prctl (a spawned child takes a while to get here)
        os._exit(1)


def children_die_with_me() -> None:
    """Every child this process forks from now on dies with it (idempotent)."""
    global _hooked
    if not _hooked and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=lambda: die_with_parent(os.getppid()))
        _hooked = True


def die_with_launcher() -> None:
    """In a process torchrun started (its env has TORCHELASTIC_RUN_ID and the parent is still torchrun's agent),
    have the kernel kill it when the agent dies. The window before this runs (interpreter start-up) is covered
    by the rendezvous: a rank whose agent is gone cannot join it, and fails."""
    if os.environ.get("TORCHELASTIC_RUN_ID") is None or os.environ.get("LOCAL_RANK") is None:
        return
    import multiprocessing as mp

    if mp.parent_process() is None:  # a rank itself, not a helper it spawned (those have their own initializer)
        die_with_parent(os.getppid())
