"""Run one command and write what it cost, measured from a process that holds nothing.

    python -S benchmarks/_launch.py REPORT.json TIMEOUT_S COMMAND [ARG ...]

Why not wait4 in the benchmark itself: on Linux a process's peak RSS (ru_maxrss) keeps the
high-water mark of the memory it had before exec, and a child spawned with fork or vfork
starts with its parent's. A benchmark that has just generated 200k records, or built a
1M-row ledger, would lend its own peak to every process it spawns. This launcher imports
nothing beyond the interpreter's core, forks, execs COMMAND and reads its cost with wait4,
so the figure is the command's own (the floor is this launcher's few MB).

REPORT.json gets `started_at` and `ended_at` (time.monotonic(), CLOCK_MONOTONIC, one
clock for the whole machine: comparable with another process's), the exit code, user and
system CPU seconds, ru_maxrss in KiB and whether the command was killed at TIMEOUT_S.
"""

import json
import os
import signal
import sys
import time


def main() -> int:
    report, timeout_s, command = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: become COMMAND, or die trying
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    timed_out = False

    def kill(signum: int, frame: object) -> None:
        nonlocal timed_out
        timed_out = True
        os.kill(pid, signal.SIGKILL)  # the child this launcher forked, by its pid

    signal.signal(signal.SIGALRM, kill)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    _, status, usage = os.wait4(pid, 0)  # retried after the alarm's handler (PEP 475)
    ended = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, 0)
    with open(report, "w", encoding="utf-8") as fh:
        json.dump(
            {
                "started_at": started,
                "ended_at": ended,
                "returncode": os.waitstatus_to_exitcode(status),
                "user_s": usage.ru_utime,
                "sys_s": usage.ru_stime,
                "maxrss_kib": usage.ru_maxrss,
                "timed_out": timed_out,
            },
            fh,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
