"""The queue of items still to label, with leases so labellers working at once do not collide.

An item is open while one of its outputs has no human verdict and it is not flagged; items
with no judgeable output (every call failed) are not served. Two queues read the same
state: `new` (open items) and `second` (items someone else judged and this labeller has
not, so the agreement page has overlap to measure).

Items are served in a fixed pseudo-random order (a hash of the request id), which mixes
strata in proportion as labelling goes. Serving an item leases it to the labeller for
`lease_s` seconds (renewed while they view it); another labeller is given an unleased item
while any remains, and only then an item someone else holds. One labeller holds at most
one lease. A skip releases the lease and hides the item from that labeller until they
clear their skips; skips live in memory only.

Labels written through the app are recorded here at once and kept in a journal that is
replayed over every fresh snapshot, so a refresh that raced a write never loses it.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from analysis.labelui.store import Item, Snapshot

QueueName = Literal["new", "second"]
QUEUES: tuple[QueueName, ...] = ("new", "second")
DEFAULT_LEASE_S = 300.0


@dataclass(frozen=True)
class Lease:
    """Who holds an item and until when (on the queue's clock)."""

    labeller: str
    expires: float


@dataclass
class Tally:
    """Labelling progress of one stratum (or of the whole set)."""

    stratum: str
    items: int = 0
    judged: int = 0
    flagged: int = 0
    no_outputs: int = 0
    in_progress: int = 0

    @property
    def remaining(self) -> int:
        return self.items - self.judged - self.flagged - self.no_outputs


@dataclass
class Progress:
    """Progress overall and per stratum (sorted by name)."""

    total: Tally
    strata: list[Tally] = field(default_factory=list)


@dataclass(frozen=True)
class _Record:
    request_id: str
    labeller: str
    targets: tuple[str, ...]
    flagged: bool


def _order_key(request_id: str) -> str:
    return hashlib.sha256(request_id.encode()).hexdigest()


class LabelQueue:
    """Which item each labeller gets next; the in-memory truth between lake refreshes."""

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lease_s = lease_s
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._skipped: dict[str, set[str]] = defaultdict(set)
        self._journal: list[_Record] = []
        self.snapshot = snapshot
        self._order: list[str] = []
        self.replace(snapshot)

    # -- state -------------------------------------------------------------------------

    def replace(self, snapshot: Snapshot) -> None:
        """Adopt a fresh snapshot of the lake, keeping leases, skips and our own writes."""
        self.snapshot = snapshot
        self._order = sorted(snapshot.items, key=_order_key)
        for rec in self._journal:
            self._apply(rec)

    def item(self, request_id: str) -> Item | None:
        return self.snapshot.items.get(request_id)

    def record(
        self, request_id: str, labeller: str, targets: tuple[str, ...], *, flagged: bool
    ) -> None:
        """Note labels just written for an item and release the labeller's lease on it."""
        rec = _Record(request_id, labeller, targets, flagged)
        self._journal.append(rec)
        self._apply(rec)
        self.release(request_id, labeller)

    def _apply(self, rec: _Record) -> None:
        labels = self.snapshot.labels
        for target in rec.targets:
            labels.add_verdict(rec.request_id, target, rec.labeller)
        labels.labellers[rec.request_id].add(rec.labeller)
        if rec.flagged:
            labels.flagged.add(rec.request_id)

    # -- what is left ------------------------------------------------------------------

    def is_judged(self, request_id: str) -> bool:
        """Every output of the item has a human verdict (by anyone)."""
        item = self.snapshot.items[request_id]
        verdicts = self.snapshot.labels.verdicts
        return bool(item.outputs) and all((request_id, t) in verdicts for t in item.outputs)

    def has_labelled(self, request_id: str, labeller: str) -> bool:
        """The labeller has given a verdict or a flag on this item (so may see the reveal)."""
        return labeller in self.snapshot.labels.labellers.get(request_id, set())

    def eligible(self, request_id: str, labeller: str, queue: QueueName = "new") -> bool:
        """Whether the item belongs in this labeller's queue right now."""
        item = self.snapshot.items.get(request_id)
        if item is None or not item.outputs or request_id in self.snapshot.labels.flagged:
            return False
        if self.has_labelled(request_id, labeller):
            return False
        if queue == "new":
            return not self.is_judged(request_id)
        others = self.snapshot.labels.labellers.get(request_id, set()) - {labeller}
        return bool(others)

    # -- leases ------------------------------------------------------------------------

    def holder(self, request_id: str) -> str | None:
        """The labeller holding an unexpired lease on the item, if any."""
        lease = self._leases.get(request_id)
        if lease is None or lease.expires <= self._clock():
            return None
        return lease.labeller

    def hold(self, request_id: str, labeller: str) -> str | None:
        """Lease (or renew) the item for the labeller; returns another labeller also on it."""
        other = self.holder(request_id)
        if other is not None and other != labeller:
            return other
        for rid, lease in list(self._leases.items()):
            if lease.labeller == labeller and rid != request_id:
                del self._leases[rid]
        self._leases[request_id] = Lease(labeller, self._clock() + self.lease_s)
        return None

    def release(self, request_id: str, labeller: str) -> None:
        lease = self._leases.get(request_id)
        if lease is not None and lease.labeller == labeller:
            del self._leases[request_id]

    def next_item(self, labeller: str, queue: QueueName = "new") -> str | None:
        """The item to serve: the one already held, else the first free one, else one held
        by somebody else (soonest to expire); None when the queue is empty."""
        skipped = self._skipped.get(labeller, set())
        for rid, lease in self._leases.items():
            if (
                lease.labeller == labeller
                and lease.expires > self._clock()
                and rid not in skipped
                and self.eligible(rid, labeller, queue)
            ):
                return rid
        held_by_others: list[tuple[float, str]] = []
        for rid in self._order:
            if rid in skipped or not self.eligible(rid, labeller, queue):
                continue
            other = self.holder(rid)
            if other is None:
                self.hold(rid, labeller)
                return rid
            held_by_others.append((self._leases[rid].expires, rid))
        if held_by_others:
            return min(held_by_others)[1]
        return None

    # -- skips -------------------------------------------------------------------------

    def skip(self, request_id: str, labeller: str) -> None:
        self._skipped[labeller].add(request_id)
        self.release(request_id, labeller)

    def skipped(self, labeller: str) -> int:
        return len(self._skipped.get(labeller, set()))

    def clear_skips(self, labeller: str) -> None:
        self._skipped.pop(labeller, None)

    # -- progress ----------------------------------------------------------------------

    def progress(self) -> Progress:
        total = Tally("(all)")
        per: dict[str, Tally] = {}
        flagged = self.snapshot.labels.flagged
        for rid, item in self.snapshot.items.items():
            for tally in (total, per.setdefault(item.stratum, Tally(item.stratum))):
                tally.items += 1
                if rid in flagged:
                    tally.flagged += 1
                elif not item.outputs:
                    tally.no_outputs += 1
                elif self.is_judged(rid):
                    tally.judged += 1
                elif self.holder(rid) is not None:
                    tally.in_progress += 1
        return Progress(total, [per[s] for s in sorted(per)])
