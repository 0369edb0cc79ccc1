"""One-line training progress (step, loss, tokens/s, ETA) for ``expert train``'s ``on_step`` hook.

On a terminal the line is rewritten in place (``\\r``); anywhere else each report is one appended line, so a
log file shows how far a run on a busy machine has got. Rates count only this run's steps (a resumed run
does not inflate them). Example line:  ``law step 12/40  loss 2.913  312 tok/s  ETA 0:01:50``
"""
from __future__ import annotations

import datetime as _dt
import time
from typing import TextIO


class ProgressLine:
    def __init__(self, name: str, total_steps: int, tokens_per_step: int, out: TextIO, *, tty: bool,
                 every_s: float = 5.0):
        self.name, self.total, self.tokens_per_step = name, total_steps, tokens_per_step
        self.out, self.tty, self.every_s = out, tty, every_s
        self._t0: float | None = None
        self._first = 0
        self._last_report: float | None = None      # None: nothing written yet, so the first report goes out

    def __call__(self, step: int, loss: float) -> None:
        now = time.monotonic()
        if self._t0 is None:
            self._t0, self._first = now, step
        done = step + 1
        if (done < self.total and not self.tty and self._last_report is not None
                and now - self._last_report < self.every_s):
            return      # a log file gets the first line, then one every few seconds, and always the last one
        self._last_report = now
        self.out.write(("\r" if self.tty else "") + self.line(done, loss, now) + ("" if self.tty else "\n"))
        if self.tty and done >= self.total:
            self.out.write("\n")
        self.out.flush()

    def line(self, done: int, loss: float, now: float) -> str:
        elapsed = now - (self._t0 or now)
        steps_here = done - self._first
        rate = steps_here / elapsed if elapsed > 0 and steps_here > 1 else None
        tok_s = f"{rate * self.tokens_per_step:,.0f} tok/s" if rate else "- tok/s"
        eta = str(_dt.timedelta(seconds=round((self.total - done) / rate))) if rate else "-"
        return f"{self.name} step {done}/{self.total}  loss {loss:.3f}  {tok_s}  ETA {eta}"
