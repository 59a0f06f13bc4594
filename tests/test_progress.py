"""pipeline.progress: what the user sees, when, and whether its numbers are true (fake clock, no sleeping)."""

from __future__ import annotations

import io
import threading

import pytest

from pipeline import progress as pg
from pipeline.progress import Progress, format_duration


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def make(total=200, *, tty=False, **kw):
    clock, out = FakeClock(), io.StringIO()
    p = Progress("run", total, stream=out, clock=clock, tty=tty, ticker=False, **kw)
    return p, clock, out


def lines(out: io.StringIO) -> list[str]:
    text = out.getvalue()
    assert text.endswith("\n") or text == ""
    return text.splitlines()


def test_first_line_at_construction():
    p, clock, out = make(200, tty=True)
    assert out.getvalue() == "\rrun: 0/200 frames\x1b[K"
    assert p.rate is None and p.eta_s is None
    p, clock, out = make(200)  # a log: no line for work shorter than the interval
    assert out.getvalue() == ""


def test_no_line_at_construction_while_total_unknown_then_set_total_draws():
    p, clock, out = make(None, tty=True)
    assert out.getvalue() == ""
    clock.advance(3.0)
    p.set_total(80)
    assert out.getvalue() == "\rrun: 0/80 frames\x1b[K"


def test_rate_and_eta_exclude_phase_time():
    p, clock, out = make(200)
    with p.phase("calibration"):
        clock.advance(10.0)
    for _ in range(5):          # 50 frames over 10 s of processing
        clock.advance(2.0)
        p(10)
    assert p.rate == pytest.approx(50 / 10)
    assert p.eta_s == pytest.approx(150 / 5.0)      # 30 s
    assert p.line() == "run: 50/200 frames  5.0 frames/s  ETA 30 s"


def test_rate_counts_first_block_time():
    # the first block's time is processing time: 8 frames arriving after 4 s is 2 frames/s, not infinite
    p, clock, out = make(100)
    clock.advance(4.0)
    p(8)
    assert p.rate == pytest.approx(2.0)
    assert p.eta_s == pytest.approx(92 / 2.0)


def test_phase_in_middle_of_processing_is_excluded():
    p, clock, _ = make(100)
    clock.advance(5.0)
    p(10)
    with p.phase("compile"):
        clock.advance(20.0)
        assert p.rate == pytest.approx(2.0)         # the open phase is not counted either
    clock.advance(5.0)
    p(10)
    assert p.rate == pytest.approx(20 / 10.0)


def test_already_done_counts_toward_done_not_rate():
    p, clock, out = make(200)
    p.already_done(120)
    assert p.rate is None and p.eta_s is None
    assert p.line() == "run: 120/200 frames"
    clock.advance(4.0)
    p(20)
    assert p.done == 140
    assert p.rate == pytest.approx(20 / 4.0)
    assert p.eta_s == pytest.approx((200 - 140) / 5.0)


def test_off_tty_cadence():
    p, clock, out = make(1000, interval=5.0)
    assert len(lines(out)) == 0
    for _ in range(4):                     # 4 s: still inside the interval
        clock.advance(1.0)
        p(10)
    assert len(lines(out)) == 0
    clock.advance(1.0)                     # 5 s since the start
    p(10)
    assert lines(out)[0] == "run: 50/1000 frames  10.0 frames/s  ETA 1:35"
    clock.advance(4.9)
    p(10)
    assert len(lines(out)) == 1
    clock.advance(0.1)
    p(10)
    assert len(lines(out)) == 2
    p.close()                              # after a line, the summary: 70 frames in 10 s
    assert lines(out)[-1] == "run: 70/1000 frames in 10 s (7.0 frames/s)"
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_off_tty_short_work_writes_nothing_at_all():
    p, clock, out = make(10, interval=5.0)
    with p.phase("calibration"):
        clock.advance(1.0)
    clock.advance(2.0)
    p(10)
    p.close()
    assert out.getvalue() == ""


def test_off_tty_a_long_phase_is_named_in_the_log():
    p, clock, out = make(200)
    with p.phase("noise model"):
        assert out.getvalue() == ""
        clock.advance(12.0)
        p._tick_once()                            # what the ticker thread does every interval
        assert lines(out)[-1] == "run: noise model ... 12 s"
    assert len(lines(out)) == 1
    assert p.line() == "run: 0/200 frames"        # the name is cleared on exit


def test_tty_redraws_in_place_and_rate_limits():
    p, clock, out = make(100, tty=True, min_redraw=0.2)
    assert out.getvalue() == "\r" + "run: 0/100 frames" + "\x1b[K"
    clock.advance(0.1)
    p(1)
    assert out.getvalue().count("\r") == 1        # too soon to redraw
    clock.advance(0.1)
    p(1)                                          # 2 frames in 0.2 s
    assert out.getvalue().count("\r") == 2
    assert out.getvalue().endswith("\rrun: 2/100 frames  10.0 frames/s  ETA 10 s\x1b[K")
    with p.phase("compile"):                      # phase changes always redraw
        assert out.getvalue().count("\r") == 3
        assert out.getvalue().endswith("\rrun: compile ... 0 s\x1b[K")
    assert out.getvalue().count("\r") == 4
    assert "\n" not in out.getvalue()
    p.close()
    assert out.getvalue().endswith("\x1b[K\n") and out.getvalue().count("\n") == 1


def test_tty_detected_from_stream():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert Progress("run", 3, stream=Tty(), clock=FakeClock(), ticker=False).tty is True
    assert Progress("run", 3, stream=io.StringIO(), clock=FakeClock(), ticker=False).tty is False

    class NoIsatty:
        def __init__(self):
            self.parts = []

        def write(self, s):
            self.parts.append(s)

        def flush(self):
            pass

    s, clock = NoIsatty(), FakeClock()
    p = Progress("run", 3, stream=s, clock=clock, ticker=False)
    assert p.tty is False and s.parts == []
    clock.advance(6.0)
    p(1)
    assert s.parts == ["run: 1/3 frames  0.17 frames/s  ETA 12 s\n"]


def test_default_stream_is_stderr_at_call_time(capsys):
    clock = FakeClock()
    p = Progress("run", 4, clock=clock, tty=False, ticker=False)
    clock.advance(8.0)
    p(4)
    p.close()
    assert capsys.readouterr().err.splitlines() == ["run: 4/4 frames  0.5 frames/s  ETA 0 s",
                                                    "run: 4/4 frames in 8.0 s (0.5 frames/s)"]


@pytest.mark.parametrize("tty", [False, True])
def test_quiet_writes_nothing_but_counts(tty):
    p, clock, out = make(100, tty=tty, quiet=True)
    with p.phase("calibration"):
        clock.advance(10.0)
    p.set_total(100)
    p.already_done(10)
    clock.advance(10.0)
    p(40)
    p.close()
    assert out.getvalue() == ""
    assert p.rate == pytest.approx(4.0)
    assert p.eta_s == pytest.approx(50 / 4.0)


def test_close_is_idempotent_and_summarises():
    p, clock, out = make(200)
    with p.phase("calibration"):
        clock.advance(10.0)
    clock.advance(40.0)
    p(200)
    p.close()
    p.close()
    clock.advance(30.0)
    p(1)                                          # after close: counted, not drawn
    final = "run: 200/200 frames in 50 s (5.0 frames/s)"
    assert lines(out)[-1] == final
    assert lines(out).count(final) == 1


def test_close_tty_and_unknown_total():
    p, clock, out = make(None, tty=True)
    clock.advance(2.5)
    p(5)
    p.close()
    assert out.getvalue().endswith("\rrun: 5 frames in 2.5 s (2.0 frames/s)\x1b[K\n")


def test_other_units_pluralise():
    p, clock, out = make(12, unit="ROI")
    clock.advance(3.0)
    p(3)
    assert p.line() == "run: 3/12 ROIs  1.0 ROIs/s  ETA 9 s"


def test_module_phase_reaches_current_reporter():
    p, clock, out = make(10)
    assert pg.current() is None
    with pg.reporting(p):
        assert pg.current() is p
        with pg.phase("calibration"):
            assert p.line() == "run: calibration ... 0 s"
            clock.advance(6.0)
        inner, _, _ = make(5)
        with pg.reporting(inner):
            assert pg.current() is inner
        assert pg.current() is p
    assert pg.current() is None
    clock.advance(2.0)
    p(4)
    assert p.rate == pytest.approx(4 / 2.0)        # the 6 s named from afar were left out
    assert "run: 4/10 frames  2.0 frames/s  ETA 3 s" in lines(out)  # 8 s since the start: a log line


def test_module_phase_without_reporter_is_noop():
    assert pg.current() is None
    with pg.phase("calibration"):
        pass


def test_reporting_restores_on_error():
    p, _, _ = make(10)
    with pytest.raises(RuntimeError):
        with pg.reporting(p):
            raise RuntimeError("boom")
    assert pg.current() is None


def test_phase_from_a_worker_thread_reaches_current():
    p, clock, _ = make(10)
    seen = []

    def work():
        with pg.phase("compile"):
            seen.append(p.line())

    with pg.reporting(p):
        t = threading.Thread(target=work)
        t.start()
        t.join()
    assert seen == ["run: compile ... 0 s"]


def test_updates_from_threads_all_counted():
    p, clock, _ = make(8000)
    threads = [threading.Thread(target=lambda: [p(1) for _ in range(1000)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert p.done == 8000


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (16.4, "16 s"), (59.6, "1:00"), (125, "2:05"),
                                           (3725, "1:02:05")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
