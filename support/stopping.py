"""Ctrl-C during training: the first press stops at the end of the step and saves, a second quits.

Read this when you wonder what happens to your run when you press Ctrl-C (or the machine's
scheduler sends SIGTERM), and why a second Ctrl-C under torchrun does not quit at once.
"""
from __future__ import annotations

import signal


class StopRequest:
    """The first Ctrl-C (or SIGTERM) asks training to stop at the next step boundary and save; a
    second Ctrl-C aborts at once (KeyboardInterrupt: nothing more is saved). Under torchrun a worker
    may see one Ctrl-C twice (from the terminal and forwarded by torchrun), so there only the first
    counts, and torchrun itself ends workers that take too long. Installed only while training."""

    def __init__(self, say, distributed: bool):
        self.signum = None
        self.say = say
        self.distributed = distributed
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT and not self.distributed:
                raise KeyboardInterrupt
            return
        self.signum = signum
        self.say(f"\n{signal.Signals(signum).name}: stopping after this step and saving "
                 f"(Ctrl-C again to quit without saving)")

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
