"""`run --checkpoint S`: the profile of a run still going, written every S seconds.

A host that crashes, or a capprobe that is killed, during an hours-long session loses at
most S seconds of it: the last checkpoint is a whole profile that `capprobe show` and
`capprobe unit` read, marked `complete: false` with the reason. It is written from the read
loop (the one thread that touches the facts), atomically: a temporary file in the same
directory, fsync'ed, renamed over the previous checkpoint, then the directory fsync'ed so
the rename itself survives a crash. The final profile replaces the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from .profile import ProfileError, save_profile


@dataclasses.dataclass(frozen=True)
class _CapabilitiesSoFar:
    """The capability recorder seen without stopping it (what session_profile asks of one)."""

    recorder: object

    def section(self, profile: dict) -> dict:
        return self.recorder.section_so_far(profile)

    def incomplete_reasons(self) -> list[str]:
        return []  # the probe's losses are counted when it stops; a checkpoint is incomplete anyway


class Checkpoints:
    """Writes the session's profile to DEST every EVERY seconds while it runs."""

    def __init__(self, dest: Path, every: float, force: bool, say=lambda msg: None) -> None:
        self.dest, self.every = Path(dest), every
        self._force = force  # DEST existed before the run (checked then) and may be replaced
        self._say = say
        self._due = time.monotonic() + every
        self.written = 0
        self.failed: str | None = None

    def tick(self, state) -> None:
        """Called from the read loop between batches of lines: write when one is due."""
        if time.monotonic() < self._due:
            return
        self.write(checkpoint_profile(state))
        self._due = time.monotonic() + self.every  # the next one counts from this one's end

    def write(self, profile: dict) -> None:
        try:
            save_profile(profile, self.dest, force=self._force or self.written > 0)
            fsync_directory(self.dest.parent)
        except (ProfileError, OSError) as e:
            if self.failed is None:  # say it once; the run goes on, the next checkpoint tries again
                self._say(f"checkpoint not written: {e}; the run goes on")
            self.failed = str(e)
            return
        self.written += 1

    @property
    def final_may_replace(self) -> bool:
        """The final profile may replace DEST: a checkpoint of this run is there."""
        return self._force or self.written > 0


def checkpoint_profile(state) -> dict:
    """The profile of a session still running, from its state as it stands."""
    from .session import session_profile  # session imports nothing of this module's
    now = time.time()
    profile = session_profile(dataclasses.replace(state, recorder=_CapabilitiesSoFar(state.recorder), notes=[]),
                              now, None, [])
    profile["complete"] = False
    profile["incomplete"] = [f"checkpoint of a run still going, {now - state.started:.0f} s after its start: "
                             "the final profile replaces it", *profile["incomplete"]]
    return profile


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory if str(directory) else ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
