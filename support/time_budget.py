"""The time budget (max_minutes): where the learning-rate schedule ends so a run limited by minutes finishes decayed.

Read this when you train for a fixed number of minutes and wonder how train.py knows where to end
its cosine curve. A run limited by steps never consults it beyond the `out_of_time` check.
"""
from __future__ import annotations

import time

from support.distributed import Processes, all_reduce_sum

FIT_EVERY = 25            # steps between re-fits of the schedule to the time budget
RESERVE = 0.03            # share of the budget kept for the final evaluation


def clock() -> float:
    """Seconds on a monotonic clock: the budget's one source of time (a test may replace it)."""
    return time.monotonic()


class TimeBudget:
    """How long this run may still train, and the step its schedule should end at to use it all.

    Minutes count every run that led to this state (resumed runs included). The pace is measured
    over this run's loop, evaluations included; 3% is set aside for the final evaluation. All
    processes take the same horizon, since they must use the same learning rate."""

    def __init__(self, max_minutes: float, previous_minutes: float, started: float, max_iters: int,
                 procs: Processes, device):
        self.seconds = max_minutes * 60 if max_minutes > 0 else None     # None: no time limit
        self.previous_minutes, self.started, self.max_iters = previous_minutes, started, max_iters
        self.procs, self.device = procs, device
        self.loop_start, self.loop_first_step = started, 0

    @property
    def limited(self) -> bool:
        return self.seconds is not None

    def minutes_so_far(self) -> float:
        """Wall time of every run that led to this state, this one included."""
        return self.previous_minutes + (clock() - self.started) / 60

    def out_of_time(self) -> bool:
        return self.limited and self.minutes_so_far() * 60 >= self.seconds

    def start_loop(self, step: int) -> int:
        """The training loop starts at `step`: from now on its pace is measured. Returns the horizon,
        fitted from the earlier runs' pace when resuming."""
        self.loop_start, self.loop_first_step = clock(), step
        return self.fit(step)

    def refit(self, step: int, horizon: int) -> int:
        """The horizon for this step: re-fitted to the measured pace every FIT_EVERY steps."""
        if not self.limited or (step - self.loop_first_step) % FIT_EVERY != FIT_EVERY - 1:
            return horizon
        return self.fit(step)

    def fit(self, step: int) -> int:
        """The step this run will reach when its time runs out (at most max_iters, at least step + 1)."""
        if not self.limited:
            return self.max_iters
        steps, elapsed = step - self.loop_first_step, clock() - self.loop_start
        if steps == 0 and self.previous_minutes > 0:     # resuming: the earlier runs' pace
            steps, elapsed = step, self.previous_minutes * 60
        remaining = self.seconds * (1 - RESERVE) - self.minutes_so_far() * 60
        reachable = step + max(1, int(steps / elapsed * remaining)) if steps and elapsed > 0 else None
        horizon = self.max_iters if reachable is None else min(self.max_iters, reachable)
        [total] = all_reduce_sum([float(horizon)], self.procs, self.device)
        return max(step + 1, int(total / self.procs.world_size))
