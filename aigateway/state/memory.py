"""
The interface of a bucket store (L{BucketStore}) and the store of one
process: token buckets in its memory (L{MemoryBuckets}).

A decision checks a request's buckets and takes from them in one step: a
request passes only when every bucket admits it, and only then is anything
taken.  A store answers at once (L{MemoryBuckets}) or with a L{Deferred}
(a store across the network); the caller handles both.
"""

from __future__ import annotations

import collections
from typing import Sequence, Union

import attrs
from twisted.internet.defer import Deferred, succeed

from aigateway.config import Bucket

__all__ = ["BucketStore", "Check", "MemoryBuckets", "Refused", "UNAVAILABLE", "Verdict"]


# One bucket of a decision: its name, its parameters, and how many tokens
# to take from it (0: only check that it is not empty).
Check = tuple[str, Bucket, float]


@attrs.frozen
class Refused:
    """
    The bucket that refused a request.

    @ivar index: its place in the checks the store was given, or -1 when
        no bucket could be read and the store's policy is to deny.
    @ivar level: what it held.
    """

    index: int
    level: float


# The verdict of a store that cannot reach its buckets and denies.
UNAVAILABLE = Refused(-1, 0.0)

# L{None}: admitted, and taken.
Verdict = Union[Refused, None]


def admits(level: float, take: float) -> bool:
    """
    Whether a bucket at C{level} admits a request that takes C{take}: it
    holds that much, and is not empty (a token bucket checked with nothing
    to take yet, whose charge comes after the answer, may go into debt).
    """
    return level > 0 and level >= take


class BucketStore:
    """
    Where token buckets live.
    """

    def decide(self, checks: Sequence[Check], now: float) -> Verdict | Deferred[Verdict]:
        """
        Check every bucket of C{checks}; when all admit, take from each
        what it says.

        @param now: this gateway's time (a store with a clock of its own,
            shared by every gateway, may use that instead).
        @return: the verdict, or a L{Deferred} that fires with it (and
            never fails).
        """
        raise NotImplementedError()

    def charge(self, buckets: Sequence[tuple[str, Bucket]], amount: float, now: float) -> None:
        """
        Take C{amount} from each bucket, even into debt (the tokens an
        answer used, known once it ended).  Nobody waits for it.
        """
        raise NotImplementedError()

    def start(self) -> None:
        """
        Begin to serve (connect, for a store across the network).
        """

    def stop(self) -> Deferred[None]:
        """
        Stop serving, and close what the store holds open.
        """
        return succeed(None)


class MemoryBuckets(BucketStore):
    """
    Token buckets in this process's memory, the least recently used
    forgotten beyond C{capacity} (a forgotten bucket is full again).
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._levels: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def level(self, name: str, bucket: Bucket, now: float) -> float:
        """
        How many tokens the bucket C{name} holds at C{now}.
        """
        stored = self._levels.get(name)
        if stored is None:
            return bucket.limit
        level, at = stored
        return min(bucket.limit, level + (now - at) * bucket.rate)

    def take(self, name: str, bucket: Bucket, amount: float, now: float, force: bool = False) -> float:
        """
        Take C{amount} tokens if the bucket holds them (or anyway, when
        C{force}, going into debt).

        @return: the level after taking, or the (unchanged) level, negative
            only through debt, when there were not enough.
        """
        level = self.level(name, bucket, now)
        if level >= amount or force:
            level -= amount
        self._levels[name] = (level, now)
        self._levels.move_to_end(name)
        if len(self._levels) > self.capacity:
            self._levels.popitem(last=False)
        return level

    def decide(self, checks: Sequence[Check], now: float) -> Verdict:
        for index, (name, bucket, take) in enumerate(checks):
            level = self.level(name, bucket, now)
            if not admits(level, take):
                return Refused(index, level)
        for name, bucket, take in checks:
            if take:
                self.take(name, bucket, take, now)
        return None

    def charge(self, buckets: Sequence[tuple[str, Bucket]], amount: float, now: float) -> None:
        for name, bucket in buckets:
            self.take(name, bucket, amount, now, force=True)
