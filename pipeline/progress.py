"""Truthful progress reporting for long commands.

A :class:`Progress` shows, as soon as the amount of work is known, how many units
(frames, ROIs, ...) are done, the real rate since processing started and an ETA. On
a terminal it redraws one line in place; off a terminal (a log file, a pipe) it
writes a full line at the start, when a set-up phase starts, at most one every
``interval`` seconds while work is done, and at the end. Set-up phases
(calibration, noise-model fit, compile) are named while they run and their time is
left out of the processing rate. ``quiet`` silences all of it.

Library code that is not handed the reporter can still name its phases through the
module-level *current reporter*::

    with reporting(Progress("run", total=200)) as p:
        with phase("calibration"):     # anywhere below, e.g. in pipeline.calibration
            ...
        engine.run(progress=p)          # the engines call progress(n) per finished block
        p.close()

The current reporter is a module global guarded by a lock, not a context variable,
so phases named from the engines' worker threads reach it too.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TextIO

__all__ = ["Progress", "current", "format_duration", "phase", "reporting"]


def format_duration(seconds: float) -> str:
    """A duration as ``"16 s"``, ``"2:05"`` or ``"1:02:05"``.

    Parameters
    ----------
    seconds : float
        The duration; rounded to whole seconds (negative values count as 0).

    Returns
    -------
    str
        Seconds below a minute (``"16 s"``), ``m:ss`` below an hour, ``h:mm:ss`` above.
    """
    s = max(0, int(round(seconds))) if math.isfinite(seconds) else 0
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _format_rate(rate: float) -> str:
    """A rate with about two significant figures for slow work, one decimal from 1/s, none from 100/s."""
    if rate >= 100:
        return f"{rate:.0f}"
    if rate >= 1:
        return f"{rate:.1f}"
    return f"{rate:.2g}"


class Progress:
    """Progress of one long command: units done, real rate, ETA, and the set-up phase running.

    Parameters
    ----------
    desc : str
        What is running, the prefix of every line (``"run"``).
    total : int or None, optional
        Units of work in all, counting those already done by an earlier (resumed) run;
        ``None`` until known (see :meth:`set_total`). When known, the first line is drawn
        at once.
    unit : str, optional
        The unit counted, ``"frame"`` by default; plural by adding ``"s"``.
    stream : text stream or None, optional
        Where to write; ``None`` means ``sys.stderr``, looked up at each write.
    quiet : bool, optional
        Write nothing at all (counting, :attr:`rate` and :attr:`eta_s` still work).
    clock : callable, optional
        Seconds, monotonic; :func:`time.monotonic` by default (tests pass a fake one).
    tty : bool or None, optional
        Redraw one line in place (a terminal) or write log lines; ``None`` asks the
        stream's ``isatty()`` (``False`` if it has none).
    interval : float, optional
        Off a terminal (a log), a line every ``interval`` seconds, the first after ``interval`` seconds (work
        shorter than that writes nothing there, not even the final line: scripts' stderr stays clean).
    min_redraw : float, optional
        On a terminal, the fewest seconds between two redraws on updates.
    ticker : bool, optional
        Off a terminal, a daemon thread that writes the line every ``interval`` even without updates (a long
        phase); tests with a fake clock turn it off.

    Notes
    -----
    The processing rate is the units finished in this process divided by the time since
    construction less the time spent in phases: a run that spends 10 s in a
    ``"calibration"`` phase and then 10 s processing 50 frames reports 5.0 frames/s.
    Units passed to :meth:`already_done` count toward the frames done but not the rate.
    All methods may be called from several threads.
    """

    def __init__(self, desc: str, total: int | None = None, *, unit: str = "frame", stream: TextIO | None = None,
                 quiet: bool = False, clock: Callable[[], float] = time.monotonic, tty: bool | None = None,
                 interval: float = 5.0, min_redraw: float = 0.2, ticker: bool = True) -> None:
        if total is not None and total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        self.desc = desc
        self.unit = unit
        self.quiet = quiet
        self.interval = float(interval)
        self.min_redraw = float(min_redraw)
        self._stream = stream
        self._clock = clock
        self._lock = threading.RLock()
        self._total = total
        self._done = 0            # all units done, resumed ones included
        self._before = 0          # units done before this process started
        self._t0 = clock()
        self._phase_s = 0.0       # seconds spent in finished phases (outside the processing rate)
        self._phases: list[tuple[object, str, float]] = []   # open phases: (token, name, start), innermost last
        self._phase_since: float | None = None                 # when the outermost open phase started
        self._last_draw: float | None = None
        self._closed = False
        if tty is None:
            tty = False
            if not quiet:
                isatty = getattr(self._out(), "isatty", None)
                try:
                    tty = bool(isatty()) if callable(isatty) else False
                except (OSError, ValueError):
                    tty = False
        self.tty = tty
        self._ticker = None
        if ticker and not tty and not quiet:  # a log line every interval even while a phase runs for long
            self._ticker = threading.Event()
            threading.Thread(target=self._tick, args=(self._ticker,), daemon=True, name="progress-log").start()
        if total is not None:
            self._draw(force=True)

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval / 4):
            self._tick_once()

    def _tick_once(self) -> None:
        """Write the log line if one is due (the ticker thread's step)."""
        with self._lock:
            self._draw(force=False)

    # ----- counting -----------------------------------------------------------------------------------------

    def __call__(self, n: int) -> None:
        """Count ``n`` more units finished (the ``progress(n)`` callable the engines call).

        Parameters
        ----------
        n : int
            Units finished since the last call.
        """
        with self._lock:
            self._done += int(n)
            self._draw(force=False)

    def already_done(self, n: int) -> None:
        """Count ``n`` units finished before this process started (a resumed run).

        They count toward the units done (and so shorten the ETA) but not toward the rate.
        The line is redrawn at once.

        Parameters
        ----------
        n : int
            Units found done.
        """
        with self._lock:
            self._done += int(n)
            self._before += int(n)
            self._draw(force=True)

    def set_total(self, total: int) -> None:
        """The work became known (e.g. after counting a TIFF folder): set it and draw at once.

        Parameters
        ----------
        total : int
            Units of work in all, counting those already done by an earlier run.
        """
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        with self._lock:
            self._total = int(total)
            self._draw(force=True)

    @property
    def done(self) -> int:
        """Units done so far, resumed ones included."""
        with self._lock:
            return self._done

    @property
    def total(self) -> int | None:
        """Units of work in all, or ``None`` while unknown."""
        with self._lock:
            return self._total

    # ----- phases -------------------------------------------------------------------------------------------

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Name a set-up phase while it runs; its time is left out of the processing rate.

        The name is shown at once (``"run: calibration ..."``; off a terminal, as a line
        when the phase starts) and cleared on exit. Phases may nest, or overlap from
        several threads: the latest open one is shown.

        Parameters
        ----------
        name : str
            What is being set up (``"calibration"``, ``"noise model"``, ``"compile"``).

        Yields
        ------
        None
        """
        token = object()
        with self._lock:
            now = self._clock()
            if not self._phases:
                self._phase_since = now
            self._phases.append((token, name, now))
            self._draw(force=True, now=now)
        try:
            yield
        finally:
            with self._lock:
                now = self._clock()
                self._phases = [p for p in self._phases if p[0] is not token]
                if not self._phases and self._phase_since is not None:
                    self._phase_s += max(0.0, now - self._phase_since)
                    self._phase_since = None
                if self.tty:   # off a terminal the next line comes with the next update or at close
                    self._draw(force=True, now=now)

    # ----- numbers ------------------------------------------------------------------------------------------

    def _processing_s(self, now: float) -> float:
        """Seconds since construction less those spent in phases (the open one too)."""
        paused = self._phase_s + (now - self._phase_since if self._phase_since is not None else 0.0)
        return now - self._t0 - paused

    def _rate(self, now: float) -> float | None:
        units = self._done - self._before
        if units <= 0:
            return None
        elapsed = self._processing_s(now)
        return units / elapsed if elapsed > 0 else None

    def _eta(self, now: float) -> float | None:
        if self._total is None:
            return None
        remaining = self._total - self._done
        if remaining <= 0:
            return 0.0
        rate = self._rate(now)
        return remaining / rate if rate else None

    @property
    def rate(self) -> float | None:
        """Units per second since processing started, or ``None`` before any unit.

        Only units finished in this process count, over the time since construction
        less the time spent in phases.
        """
        with self._lock:
            return self._rate(self._clock())

    @property
    def eta_s(self) -> float | None:
        """Seconds left, ``(total - done) / rate``; ``None`` while the total or the rate is unknown."""
        with self._lock:
            return self._eta(self._clock())

    # ----- text ---------------------------------------------------------------------------------------------

    @property
    def _units(self) -> str:
        return self.unit + "s"

    def _count(self) -> str:
        return f"{self._done}/{self._total}" if self._total is not None else f"{self._done}"

    def _line(self, now: float) -> str:
        if self._phases:
            _, name, start = self._phases[-1]
            return f"{self.desc}: {name} ... {format_duration(now - start)}"
        text = f"{self.desc}: {self._count()} {self._units}"
        rate = self._rate(now)
        if rate is not None:
            text += f"  {_format_rate(rate)} {self._units}/s"
            eta = self._eta(now)
            if eta is not None:
                text += f"  ETA {format_duration(eta)}"
        return text

    def line(self) -> str:
        """The current status text.

        Returns
        -------
        str
            ``"run: 120/200 frames  4.9 frames/s  ETA 16 s"`` (rate and ETA once known), or
            while a phase runs ``"run: calibration ... 3 s"`` (the seconds it has run).
        """
        with self._lock:
            return self._line(self._clock())

    def _summary(self, now: float) -> str:
        wall = now - self._t0
        took = f"{wall:.1f} s" if wall < 10 else format_duration(wall)
        if self._done == 0 and not self._total:  # work not counted in units (a fit, a report): how long it took
            return f"{self.desc}: done in {took}"
        text = f"{self.desc}: {self._count()} {self._units} in {took}"
        rate = self._rate(now)
        if rate is not None:
            text += f" ({_format_rate(rate)} {self._units}/s)"
        return text

    # ----- output -------------------------------------------------------------------------------------------

    def _out(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _write(self, text: str) -> None:
        out = self._out()
        try:
            out.write(text)
            out.flush()
        except (OSError, ValueError):   # a closed or broken stream must not end the run
            self.quiet = True

    def _fit(self, text: str) -> str:
        """On a terminal, cut the line to its width (a wrapped line cannot be redrawn in place)."""
        try:
            width = os.get_terminal_size(self._out().fileno()).columns
        except (AttributeError, OSError, ValueError):
            return text
        return text[:width - 1] if width > 1 and len(text) >= width else text

    def _draw(self, *, force: bool, now: float | None = None) -> None:
        """Draw the line if due (called with the lock held)."""
        if self.quiet or self._closed:
            return
        if now is None:
            now = self._clock()
        if not self.tty:  # a log: a line every interval, none for work shorter than that
            if now - (self._last_draw if self._last_draw is not None else self._t0) < self.interval:
                return
        elif not force and self._last_draw is not None and now - self._last_draw < self.min_redraw:
            return
        self._last_draw = now
        text = self._line(now)
        self._write(f"\r{self._fit(text)}\x1b[K" if self.tty else text + "\n")

    def close(self, ok: bool = True) -> None:
        """Write the final line, ``"run: 200/200 frames in 41 s (4.9 frames/s)"``; later calls do nothing.

        ``ok=False`` (the work failed): no summary; a terminal's status line is cleared for the error message.
        """
        with self._lock:
            if self._closed:
                return
            now = self._clock()
            if self._ticker is not None:
                self._ticker.set()
            if not self.quiet and (self.tty or self._last_draw is not None):  # a log: only after a line
                if ok:
                    text = self._summary(now)
                    self._write(f"\r{self._fit(text)}\x1b[K\n" if self.tty else text + "\n")
                elif self.tty:
                    self._write("\r\x1b[K")
            self._closed = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(ok=exc_type is None)


# ----- the current reporter ---------------------------------------------------------------------------------

_current: Progress | None = None
_current_lock = threading.Lock()


def current() -> Progress | None:
    """The reporter installed by :func:`reporting`, or ``None``.

    Returns
    -------
    Progress or None
    """
    with _current_lock:
        return _current


@contextmanager
def reporting(p: Progress | None) -> Iterator[Progress | None]:
    """Install ``p`` as the current reporter while the block runs; the previous one comes back on exit.

    Parameters
    ----------
    p : Progress or None
        The reporter (``None`` hides any current one).

    Yields
    ------
    Progress or None
        ``p``.
    """
    global _current
    with _current_lock:
        previous, _current = _current, p
    try:
        yield p
    finally:
        with _current_lock:
            _current = previous


@contextmanager
def phase(name: str) -> Iterator[None]:
    """:meth:`Progress.phase` ``name`` on the current reporter (:func:`reporting`); nothing when there is none."""
    p = current()
    if p is None:
        yield
        return
    with p.phase(name):
        yield


@contextmanager
def timed(name: str, into: dict) -> Iterator[None]:
    """:func:`phase` ``name``, and its wall seconds added to ``into[name]`` (a run's set-up account)."""
    t0 = time.perf_counter()
    try:
        with phase(name):
            yield
    finally:
        into[name] = into.get(name, 0.0) + time.perf_counter() - t0
