"""A hung rank ends the job instead of burning every GPU: a step watchdog in each training process.

A stopped process, a stuck collective or a dead GPU that does not kill its process leaves the other ranks waiting.
When no training step has finished for --collective_timeout seconds, the watchdog prints the step, the Python
stacks of every thread of this process, and exits with WATCHDOG_EXIT (the launcher passes it on; the Slurm batch
script requeues on it). Collectives themselves (accelerate's InitProcessGroupKwargs) give up COLLECTIVE_GRACE
seconds later: in the loop the watchdog's message comes first, outside it (cache pre-pass, validation) a stuck
collective still ends the process.
"""
from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time

WATCHDOG_EXIT = 124  # like timeout(1): "timed out"; wan_sft/slurm.py requeues a job that ends with it
COLLECTIVE_GRACE = 60


class StepWatchdog:
    def __init__(self, timeout: float, rank: int, last_step: int, states: str):
        self.timeout, self.rank, self.states = timeout, rank, states
        self.last_step, self.last_time, self.watching = last_step, time.monotonic(), True
        self._arm_backstop()
        threading.Thread(target=self._watch, name="step-watchdog", daemon=True).start()

    def step_finished(self, step: int) -> None:
        self.last_step, self.last_time = step, time.monotonic()
        self._arm_backstop()

    @contextlib.contextmanager
    def paused(self):
        """Around work that is not a step (validation generates videos; its collectives time out on their own)."""
        self.stop()
        try:
            yield
        finally:
            self.watching = True
            self.step_finished(self.last_step)

    def stop(self) -> None:
        self.watching = False
        faulthandler.cancel_dump_traceback_later()

    def _arm_backstop(self) -> None:
        """If the stuck call holds the GIL the watch thread cannot run: faulthandler's C thread still dumps the
        stacks and exits, a minute later."""
        faulthandler.dump_traceback_later(self.timeout + COLLECTIVE_GRACE, exit=True)

    def _watch(self) -> None:
        while True:
            time.sleep(min(5.0, self.timeout / 10))
            if self.watching and time.monotonic() - self.last_time > self.timeout:
                print(f"error: rank {self.rank}: no training step finished for {self.timeout:g} s; stuck in step "
                      f"{self.last_step + 1} (a hung rank, collective or device). Stacks of this process follow; "
                      f"rerun the same command to resume from the newest complete state in {self.states}",
                      file=sys.stderr, flush=True)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                sys.stderr.flush()
                os._exit(WATCHDOG_EXIT)
