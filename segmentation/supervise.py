r"""Keep a training run going across native crashes by resuming it automatically.

TensorFlow 2.21's oneDNN CPU kernels occasionally crash the process (SIGSEGV /
SIGABRT inside ``libtensorflow_cc``; seen both in a long training run and in
small reproducible cases). Turning oneDNN off avoids it but makes a bfloat16
training step ~17x slower, so instead this wrapper restarts
``python -m segmentation.train ... --resume`` whenever it dies abnormally; the
trainer's per-epoch commit point means at most the current epoch is redone.

Usage::

    nohup python -m segmentation.supervise --max-restarts 50 -- \\
        --data-dir ../shared/datasets/figshare-seg --run-dir /work/runs/segmentation \\
        --threads 1 > /work/runs/segmentation/supervise.log 2>&1 &

Everything after ``--`` is passed to ``segmentation.train`` (``--resume`` is
added). To pause or stop training, send SIGTERM (plain ``kill``) to the
supervisor: it forwards the signal to the trainer and exits without restarting.
Only deaths by a signal (crash, ``kill -9`` of the trainer) are retried; a
normal exit (0: finished, 1: Python error, 2: bad options or another trainer
holds the run folder) ends the supervisor with the trainer's status.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def supervise(train_args: list[str], *, max_restarts: int = 50, delay_s: float = 15.0) -> int:
    """Run the trainer with ``--resume``, restarting it whenever a signal kills it.

    Args:
        train_args: Arguments of ``python -m segmentation.train``.
        max_restarts: Give up after this many abnormal exits.
        delay_s: Pause before a restart.

    Returns:
        The trainer's last exit status (negative: killed by that signal).
    """
    args = list(train_args)
    if "--resume" not in args:
        args.append("--resume")
    cmd = [sys.executable, "-m", "segmentation.train", *args]
    child: subprocess.Popen | None = None
    stopping = False

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    restarts = 0
    while True:
        print(f"[supervise {_now()}] start: {' '.join(cmd)}", flush=True)
        child = subprocess.Popen(cmd)
        code = child.wait()
        print(f"[supervise {_now()}] trainer exited with status {code}", flush=True)
        if stopping:
            print(f"[supervise {_now()}] stopped by signal; not restarting", flush=True)
            return code
        if code >= 0:  # a normal exit: finished, or an error a restart would repeat
            return code
        restarts += 1
        if restarts > max_restarts:
            print(f"[supervise {_now()}] giving up after {max_restarts} restarts", flush=True)
            return code
        print(
            f"[supervise {_now()}] killed by signal {-code}; restart {restarts}/{max_restarts} "
            f"in {delay_s:.0f} s",
            flush=True,
        )
        time.sleep(delay_s)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        split = argv.index("--")
        own, train_args = argv[:split], argv[split + 1 :]
    else:
        own, train_args = [], argv
    p = argparse.ArgumentParser(prog="python -m segmentation.supervise")
    p.add_argument("--max-restarts", type=int, default=50)
    p.add_argument("--delay", type=float, default=15.0, help="seconds before a restart")
    opts = p.parse_args(own)
    return supervise(train_args, max_restarts=opts.max_restarts, delay_s=opts.delay)


if __name__ == "__main__":
    sys.exit(main())
