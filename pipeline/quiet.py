"""Keep Ray's internals off a job's terminal: its C++ log lines stay in Ray's log files.

Ray's C++ core worker inside the driver writes its warnings and errors to the process's
stderr as well as to its log file (`/tmp/ray/session_*/logs/python-core-driver-*.log`),
with no setting to stop only the former: a Ray Data job prints, for instance, "Actor ...
has constructor arguments in the object store and max_restarts > 0" for every actor it
starts (Ray Data's own arguments; ray-project/ray#53727). `drop_native_logs()` sends the
process's stderr (file descriptor 2) through a small filter process that drops those lines
(`[2026-01-01 12:00:00,123 E 4242 4242] file.cc:12: ...`) and passes everything else
through as it arrives (progress bars, our own lines, Python warnings and tracebacks).
FATAL lines are kept. The filter is a separate process so nothing is lost when the job
dies: it drains the pipe until every writer has closed it, and it runs in a session of its own,
out of reach of Ctrl-C (the job decides what Ctrl-C does and may print after it).

`verbose()` (the `mqt` option `--verbose`, or MQT_VERBOSE=1) turns this off and lets Ray's
Python loggers speak at INFO.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

VERBOSE_ENV = "MQT_VERBOSE"

# the start of one line of Ray's C++ logger: "[date time,ms LEVEL pid tid] " (FATAL is kept)
NATIVE = re.compile(rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [DIWE] \d+ \d+\] ")
_TEMPLATE = b"[0000-00-00 00:00:00,000 I "


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false")


class LineFilter:
    """Drops Ray's C++ log lines from a byte stream, from their "[date ..." to their end of
    line, wherever they start (another thread's progress bar may be mid-line). Everything
    else passes as soon as it is known not to start one: only a tail that could still grow
    into a log line's prefix (under 48 bytes) or a log line without its end yet is held."""

    def __init__(self):
        self.held = b""

    def feed(self, data: bytes) -> bytes:
        out = []
        buf, self.held = self.held + data, b""
        while m := NATIVE.search(buf):
            out.append(buf[:m.start()])
            end = buf.find(b"\n", m.end())
            if end < 0:
                self.held = buf[m.start():]
                return b"".join(out)
            buf = buf[end + 1:]
        k = buf.rfind(b"[")
        if k >= 0 and len(buf) - k < 48 and _may_start(buf[k:]):
            buf, self.held = buf[:k], buf[k:]
        out.append(buf)
        return b"".join(out)

    def end(self) -> bytes:
        """What is still held when the stream ends (dropped if it is a log line)."""
        held, self.held = self.held, b""
        return b"" if NATIVE.match(held) else held


def _may_start(tail: bytes) -> bool:
    """Whether `tail` (starting with "[") could grow into a native log line's prefix."""
    for i, c in enumerate(tail):
        if i < len(_TEMPLATE):
            t = _TEMPLATE[i]
            ok = (c in b"0123456789") if t == ord("0") else (
                c in b"DIWE" if t == ord("I") else c == t)
        else:
            ok = c in b"0123456789 ]"
        if not ok:
            return False
    return True


def filter_stream(src: int = 0, dst: int = 1) -> None:
    """Copy `src` to `dst` through a LineFilter until `src` ends (the filter process)."""
    lf = LineFilter()
    while chunk := os.read(src, 1 << 16):
        if passed := lf.feed(chunk):
            os.write(dst, passed)
    if rest := lf.end():
        os.write(dst, rest)


def drop_native_logs() -> bool:
    """Route this process's stderr through the filter process (not with `verbose()`, and
    only once); returns whether it did."""
    if verbose() or getattr(drop_native_logs, "done", False):
        return False
    sys.stderr.flush()
    err = os.dup(2)
    try:  # the filter's stdout is our stderr as it is now
        # a session of its own: Ctrl-C (SIGINT to the terminal's process group) reaches the
        # job, which may still print after it ("left running ..."), and not the filter
        proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=err,
                                start_new_session=True)
    finally:
        os.close(err)
    os.dup2(proc.stdin.fileno(), 2)
    proc.stdin.close()  # fd 2 is now its only writer here: it ends when this process ends
    drop_native_logs.done = True
    return True


if __name__ == "__main__":  # the filter process (run as a file: no package imports)
    filter_stream()
