"""Keep the agent's inherited signal state out of the commands it starts.

exec() resets a caught signal to its default action but keeps an ignored one
ignored, and the signal mask passes through unchanged. An agent started under
`nohup` or with `&` from a non-interactive shell therefore ignores SIGHUP or
SIGINT/SIGQUIT, and without this every command it ran would ignore them too:
`kill -HUP` would do nothing to it, and a cancel's SIGINT would be lost.

Python's `restore_signals` covers only SIGPIPE, SIGXFZ and SIGXFSZ, and a
`preexec_fn` is unsafe once threads exist, so we change the agent itself once:
each inherited SIG_IGN becomes a handler that does nothing. The agent still
ignores the signal in effect, and exec hands its children the default action.
The mask is emptied for the same reason.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["clean_child_signals"]

# Python itself ignores these and `subprocess` restores them in the child.
_RESTORED_BY_POPEN = frozenset(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name))

_done = False


def _ignore(signum: int, frame: object) -> None:
    """Stand in for SIG_IGN: same effect here, the default action after exec."""


def clean_child_signals() -> None:
    """Make commands started from now on see default signal actions and an empty mask.

    Safe to call more than once; does nothing off the main thread, where Python
    cannot change signal handlers (children of other threads are not ours).
    """
    global _done
    if _done or threading.current_thread() is not threading.main_thread():
        return
    for signum in signal.valid_signals():
        if signum in _RESTORED_BY_POPEN:
            continue
        try:
            if signal.getsignal(signum) == signal.SIG_IGN:
                signal.signal(signum, _ignore)
        except (OSError, ValueError):
            continue  # SIGKILL, SIGSTOP and the real-time signals Python does not manage
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    _done = True
