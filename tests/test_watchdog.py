"""The step watchdog alone (the hung-rank run through the launcher is in test_train.py)."""
import subprocess
import sys

from conftest import REPO

SCRIPT = """
import time
from wan_sft.watchdog import StepWatchdog
watchdog = StepWatchdog(1, rank=3, last_step=7, states="OUT/states")
for step in (8, 9, 10):  # steps faster than the timeout
    time.sleep(0.5)
    watchdog.step_finished(step)
with watchdog.paused():  # validation may take longer than a step
    time.sleep(2.5)
print("survived", flush=True)
time.sleep(30)  # no further step
print("not reached", flush=True)
"""


def test_watchdog_names_the_stuck_step_prints_stacks_and_exits_124_but_not_while_paused():
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 124
    assert result.stdout == "survived\n"
    assert result.stderr.startswith(
        "error: rank 3: no training step finished for 1 s; stuck in step 11 (a hung rank, collective or device). "
        "Stacks of this process follow; rerun the same command to resume from the newest complete state in "
        "OUT/states\n")
    assert 'File "<string>", line 11 in <module>' in result.stderr  # the main thread's stack, where it waits
