"""Progress of every long loop: a tqdm bar on a terminal; anywhere else (a file, a pipe, a CI log) a plain line
every `every_s` seconds with the count, the rate and the ETA, and one summary line at the end, so a
redirected log holds no escape codes and no line per item."""

import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

from tqdm import tqdm

PLAIN_EVERY_S = 30.0  # a redirected log gets one line per half minute, whatever the loop's speed


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class PlainProgress:
    """tqdm's interface as the commands use it (update, set_postfix, write, close, iteration), written as plain
    lines: `desc: 120/500 it (24%), 3.1 it/s, ETA 2:03, loss=0.52`."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0,
                 desc: str = "", unit: str = "it", stream: TextIO | None = None, every_s: float = PLAIN_EVERY_S,
                 clock=time.monotonic) -> None:  # fmt: skip
        self.iterable = iterable
        self.total = total if total is not None or iterable is None else _length(iterable)
        self.n = self.initial = initial
        self.desc, self.unit = desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every_s, self.clock = every_s, clock
        self.postfix: dict[str, Any] = {}
        self.started = self.last_line = clock()
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last_line >= self.every_s:
            self._line()

    def set_postfix(self, postfix: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = {**(postfix or {}), **kwargs}

    def write(self, message: str) -> None:
        print(message, flush=True)  # stdout, as tqdm.write

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line(summary=True)

    def _line(self, *, summary: bool = False) -> None:
        now = self.clock()
        self.last_line = now
        done = self.n - self.initial
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {count} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s")
        if summary:
            parts.append(f"done in {_duration(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        parts += [f"{key}={value}" for key, value in self.postfix.items()]
        print(", ".join(parts), file=self.stream, flush=True)


def _length(iterable: Iterable) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def progress(iterable: Iterable | None = None, *, stream: TextIO | None = None, **options: Any) -> tqdm | PlainProgress:
    """A tqdm bar when `stream` (default stderr) is a terminal, else a PlainProgress; `options` are tqdm's
    (total, initial, desc, unit, ...; those a plain log has no use for, such as dynamic_ncols, are ignored there).
    `disable=True` gives a bar that shows nothing (other ranks)."""
    stream = stream if stream is not None else sys.stderr
    if options.get("disable") or stream.isatty():
        return tqdm(iterable, file=stream, **options)
    plain = {key: options[key] for key in ("total", "initial", "desc", "unit", "every_s") if key in options}
    return PlainProgress(iterable, stream=stream, **plain)
