"""Progress logging for long loops: periodic absl log lines with rate and ETA."""

from __future__ import annotations

import time

from absl import logging


class Progress:
  """Logs `desc: done/total (pct) rate unit/s, ETA` at most every `every_s` seconds.

  >>> bar = Progress(total=1000, desc="train", unit="step")
  >>> for step in range(1000): ...; bar.update(1)

  The rate (and ETA) leaves out the first `warmup` updates, which usually include compilation;
  until then the ETA is "?". `update(..., remaining_s=T)` replaces the rate-based ETA by the
  caller's own estimate T (e.g. from each remaining item's measured cost).
  """

  def __init__(self, total: int, desc: str, unit: str = "it", every_s: float = 5.0, start: int = 0,
               warmup: int = 1):
    self.total, self.desc, self.unit, self.every_s = int(total), desc, unit, every_s
    self.done = self._start_done = int(start)
    self._t0 = self._last = time.perf_counter()
    self._warmup = int(warmup)
    self._remaining_s = None

  @property
  def rate(self) -> float:
    """Items per second since the warm-up updates (0 while warming up)."""
    if self._warmup > 0:
      return 0.0
    elapsed = time.perf_counter() - self._t0
    return (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0

  def line(self) -> str:
    rate = self.rate
    left = max(self.total - self.done, 0)
    eta = self._remaining_s if self._remaining_s is not None else (left / rate if rate > 0 else float("nan"))
    pct = 100.0 * self.done / max(self.total, 1)
    return f"{self.desc}: {self.done}/{self.total} ({pct:.0f}%) {rate:.3g} {self.unit}/s, ETA {_fmt(eta)}"

  def update(self, n: int = 1, extra: str = "", remaining_s: float | None = None) -> None:
    self.done += n
    now = time.perf_counter()
    if self._warmup > 0:
      self._warmup -= 1
      if self._warmup == 0:  # the rate starts here
        self._t0, self._start_done = now, self.done
    self._remaining_s = remaining_s
    if now - self._last >= self.every_s or self.done >= self.total:
      self._last = now
      logging.info("%s%s", self.line(), f" {extra}" if extra else "")


def _fmt(seconds: float) -> str:
  if seconds != seconds:
    return "?"
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
