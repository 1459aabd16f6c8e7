"""What a long run shows and hears: a progress line, number formats, and Ctrl-C handling."""
from __future__ import annotations

import math
import signal
import time

def fmt_duration(seconds: float | None) -> str:
    """'1h02m03s', '4m05s', '6s'; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """A progress line on ``stream``: one updating line on a TTY, else a plain line every
    ``every`` seconds."""

    def __init__(self, stream, label: str, total: int, *, enabled: bool = True,
                 every: float = 5.0):
        self.stream, self.label, self.total = stream, label, total
        self.enabled = enabled
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.every = 0.1 if self.tty else every
        self.last = -math.inf
        self.width = 0

    def update(self, step: int, *, loss, acc, rate, left, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        pct = 100.0 * step / max(1, self.total)
        text = (f"[{self.label}] step {step}/{self.total} ({pct:5.1f}%)"
                f" | loss {fmt_float(loss)} | held-out acc {fmt_float(acc)}"
                f" | {rate:.1f} steps/s | {fmt_duration(left)} left")
        if self.tty:
            pad = max(0, self.width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the updating line (before another message is printed)."""
        if self.enabled and self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def fmt_float(value) -> str:
    """Three decimals; '-' for None."""
    return "-" if value is None else (f"{value:.3f}" if math.isfinite(value) else str(value))


class StopRequest:
    """Ctrl-C once: finish the current step, save a checkpoint and stop.  Twice: abort."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:            # not in the main thread: leave the default behaviour
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False
