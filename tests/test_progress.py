"""Progress: a bar on a terminal, nothing drawn elsewhere, one INFO log line per step."""

import io
import logging
import time

from qgraph.progress import Progress, stage


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_on_a_terminal_counts_to_the_total(caplog):
    term = Terminal()
    with caplog.at_level(logging.INFO, logger="qgraph"):
        with Progress("calibrate", total=10, stream=term) as p:
            for _ in range(5):
                p.advance(2)
    drawn = term.getvalue()
    assert "calibrate" in drawn and "10/10" in drawn
    assert [r.getMessage().split(" in ")[0] for r in caplog.records] == ["calibrate: 10 samples"]


def test_nothing_drawn_off_a_terminal_but_a_log_line(caplog):
    pipe = io.StringIO()
    with caplog.at_level(logging.INFO, logger="qgraph"):
        with Progress("report", total=3, unit="batches", stream=pipe) as p:
            p.advance(3)
    assert pipe.getvalue() == ""
    (record,) = caplog.records
    assert record.getMessage().startswith("report: 3 batches in ") and record.getMessage().endswith(" s")


def test_stage_shows_elapsed_time_while_it_runs(caplog):
    term = Terminal()
    with caplog.at_level(logging.INFO, logger="qgraph"):
        with stage("tvm.compile", stream=term):
            time.sleep(1.2)  # two ticks of the redraw thread
    drawn = term.getvalue()
    assert drawn.count("tvm.compile: 00:0") >= 2, drawn  # redrawn while running, not only at the end
    (record,) = caplog.records
    assert record.getMessage().startswith("tvm.compile: in 1.")


def test_a_failed_step_is_not_logged_as_done(caplog):
    with caplog.at_level(logging.INFO, logger="qgraph"):
        try:
            with stage("lower", stream=io.StringIO()):
                raise ValueError("boom")
        except ValueError:
            pass
    assert caplog.records == []
