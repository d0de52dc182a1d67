"""Progress on a terminal is a tqdm bar; redirected (a file, a pipe) it is a plain line every so often with the
count, rate and ETA, and one summary line at the end: no escape codes, no line per item."""

import io
import re

from tqdm import tqdm

from backbone.progress import PlainProgress, progress

ESCAPES = re.compile(r"[\r\x1b]")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_redirected_loop_writes_a_line_every_interval_and_one_summary():
    stream, clock = io.StringIO(), Clock()
    bar = PlainProgress(total=1000, desc="train", unit="it", stream=stream, every_s=30, clock=clock)
    for _ in range(1000):  # 0.1 s per item: 100 s in all
        clock.now += 0.1
        bar.update(1)
        bar.set_postfix({"loss": "0.5"}, refresh=False)
    bar.close()
    bar.close()  # closing twice writes the summary once
    lines = stream.getvalue().splitlines()
    assert not ESCAPES.search(stream.getvalue())
    assert len(lines) == 4  # at 30, 60 and 90 s, then the summary
    assert lines[0] == "train: 300/1000 it (30%), 10 it/s, ETA 1:10, loss=0.5"
    assert lines[-1] == "train: 1000/1000 it (100%), 10 it/s, done in 1:40, loss=0.5"


def test_a_resumed_loop_counts_its_rate_from_where_it_started():
    stream, clock = io.StringIO(), Clock()
    bar = PlainProgress(total=100, initial=60, desc="train", stream=stream, every_s=10, clock=clock)
    for _ in range(40):
        clock.now += 0.5
        bar.update(1)
    bar.close()
    assert stream.getvalue().splitlines()[0] == "train: 80/100 it (80%), 2 it/s, ETA 0:10"


def test_an_iterable_is_wrapped_and_summarised():
    stream = io.StringIO()
    seen = list(progress(range(5), desc="evaluate", unit="batch", stream=stream, dynamic_ncols=True, leave=False))
    assert seen == [0, 1, 2, 3, 4]
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("evaluate: 5/5 batch (100%)") and "done in 0:00" in line


def test_a_terminal_gets_a_tqdm_bar_and_a_file_gets_plain_lines():
    assert isinstance(progress(total=3, stream=Terminal()), tqdm)
    assert isinstance(progress(total=3, stream=io.StringIO()), PlainProgress)
    assert isinstance(progress(total=3, stream=io.StringIO(), disable=True), tqdm)  # other ranks: silent
