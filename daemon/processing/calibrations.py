"""The calibration sequences not yet journaled as jobs, kept between planning passes.

Each pass of the archive's scheduler, and the science planner asking which masters are still to come, used to
read every calibration frame ever archived (a JSON decode per frame) and every job's key. :class:`OpenSequences`
reads the frames catalogued since its last read (a rowid mark, renewed with the catalog's epoch as the science
planner's is) and keeps the frames of the groups that still have an unclaimed sequence; a group whose every
sequence has its job is let go, and read back by its GROUPID if a late frame of it arrives (a late frame of a
claimed sequence changes nothing: the sequence is claimed).
"""

from __future__ import annotations

from daemon.journal import Journal
from daemon.journal import jobs as journal_jobs
from daemon.journal.jobs import CalibFrame
from daemon.processing.sequences import KINDS, Sequence, group_sequences

GroupKey = tuple[str, str, str]
"""(instrument, detector, GROUPID): the frames a calibration sequence is grouped from share it."""


def claim_key(sequence: Sequence) -> tuple[str, str, str, str]:
    """(step, instrument, detector, sequence name): what the jobs' unique index knows a sequence by."""
    return (sequence.step, sequence.instrument, sequence.detector, sequence.name)


class OpenSequences:
    """The unclaimed calibration sequences, brought up to date from the frames catalogued since the last call."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._epoch: int | None = None
        self._mark = 0
        self._groups: dict[GroupKey, dict[str, CalibFrame]] = {}
        self.dark_known: set[tuple[str, str]] = set()
        """(instrument, detector) of every detector a dark frame was ever archived of (flats wait for its master)."""

    async def unclaimed(self) -> list[Sequence]:
        """Every calibration sequence with no job journaled yet, as the archived frames make it up now."""
        changes = await self.journal.read(journal_jobs.calib_changes, self._epoch, self._mark)
        if changes.full:
            self._groups, self.dark_known = {}, set()
        new: dict[GroupKey, list[CalibFrame]] = {}
        for frame in changes.frames:
            new.setdefault((frame.instrument, frame.detector, frame.groupid), []).append(frame)
            if KINDS.get(frame.imgtype) == "dark":
                self.dark_known.add((frame.instrument, frame.detector))
        reopened = [key for key in new if key not in self._groups and not changes.full]
        earlier = await self.journal.read(journal_jobs.earlier_calib_frames, reopened, self._mark) if reopened else {}
        self._epoch, self._mark = changes.epoch, changes.catalog_mark
        for key, frames in new.items():
            # Oldest first, as the catalog has them: a repeated CURINDEX keeps its first frame.
            members = self._groups.setdefault(key, {f.name: f for f in earlier.get(key, [])})
            for frame in frames:
                members.setdefault(frame.name, frame)
        sequences = group_sequences(f for members in self._groups.values() for f in members.values())
        claimed = await self.journal.read(journal_jobs.claimed_of, [claim_key(s) for s in sequences])
        unclaimed = [s for s in sequences if claim_key(s) not in claimed]
        still_open = {(s.instrument, s.detector, s.groupid) for s in unclaimed}
        self._groups = {key: members for key, members in self._groups.items() if key in still_open}
        return unclaimed
