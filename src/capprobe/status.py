"""The live status line of a long session (`run`, `attach`), on stderr.

    capprobe: 12:04 · 9 processes · 48,211 syscalls · CAP_NET_BIND_SERVICE CAP_SETUID · 14 paths written · ports 80 443 · nothing new for 3:10

The last figure is the one to watch: the time since the session last found a new capability,
written path or port. While it keeps growing, the workload is repeating itself: covered.

rich draws it (a transient Live display), only when stderr is a terminal and not --quiet.
The counts are taken in the read loop's thread (`tick`), the only thread that touches the
facts; rich's refresh thread only reads the last immutable snapshot and the clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Self

from rich.console import Console
from rich.live import Live
from rich.text import Text

from .facts.collector import FactCounts

SNAPSHOT_EVERY = 0.5  # seconds between two counts of the facts (they cost a pass over the files)
SHOWN_CAPS = 6


@dataclass(frozen=True)
class Progress:
    """What a session has found so far: the facts' counts and the capabilities found required."""

    counts: FactCounts = field(default_factory=FactCounts)
    capabilities: frozenset[str] = frozenset()

    def has_more_than(self, earlier: Progress) -> bool:
        """What "new" means for the status line: a capability, a written path or a port."""
        return bool(self.capabilities - earlier.capabilities or self.counts.ports - earlier.counts.ports
                    or self.counts.written_paths > earlier.counts.written_paths)


def session_progress(collector, recorder) -> Progress:
    """PROGRESS for a StatusLine of a session folding into COLLECTOR, with RECORDER's probe."""
    return Progress(collector.progress(), recorder.required_so_far())


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def status_text(progress: Progress, elapsed: float, quiet_for: float, label: str = "capprobe") -> str:
    """The status line itself (pure)."""
    counts = progress.counts
    caps = sorted(progress.capabilities)
    caps_text = " ".join(caps[:SHOWN_CAPS]) + (f" +{len(caps) - SHOWN_CAPS}" if len(caps) > SHOWN_CAPS else "")
    ports = sorted(counts.ports, key=lambda p: (len(p), p))
    return " · ".join([
        f"{label}: {_clock(elapsed)}",
        f"{counts.processes} process{'es' if counts.processes != 1 else ''}",
        f"{counts.syscalls:,} syscalls",
        caps_text or "no capability yet",
        f"{counts.written_paths} paths written",
        ("ports " + " ".join(ports[:6]) + (" ..." if len(ports) > 6 else "")) if ports else "no port",
        f"nothing new for {_clock(quiet_for)}",
    ])


class StatusLine:
    """A context manager drawing the status line of one session while it runs.

    PROGRESS() is called from tick() only, in the thread that owns the facts it counts.
    Disabled (quiet, or stderr not a terminal), it draws nothing and counts nothing.
    """

    def __init__(self, progress, enabled: bool = True, console: Console | None = None) -> None:
        self._progress = progress
        self._console = console or Console(stderr=True)
        self.enabled = enabled and self._console.is_terminal
        self._live: Live | None = None
        self._started = self._last_new = time.monotonic()
        self._last_tick = 0.0
        self._snapshot = Progress()

    def tick(self) -> None:
        """Count the facts again, at most every SNAPSHOT_EVERY seconds (from the read loop)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_tick < SNAPSHOT_EVERY:
            return
        self._last_tick = now
        snapshot = self._progress()
        if snapshot.has_more_than(self._snapshot):
            self._last_new = now
        self._snapshot = snapshot

    def __rich__(self) -> Text:
        now = time.monotonic()
        return Text(status_text(self._snapshot, now - self._started, now - self._last_new), overflow="ellipsis",
                    no_wrap=True)

    def __enter__(self) -> Self:
        if self.enabled:
            self._live = Live(self, console=self._console, refresh_per_second=2, transient=True)
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
