"""
Which of a route's targets a request tries, in which order: routing by
model, priorities, weights, and passive health (ejection).

Pure: the time and the random numbers are passed in.

  - Routing by model: the targets whose C{models} globs match the
    requested model serve it, and only they; targets without C{models}
    serve the models no target claims (and requests whose model is not
    known).  A request no target serves has no plan.
  - Order: healthy targets by priority, lowest first; within a priority, a
    weighted draw without replacement.  Ejected targets come last, the
    least recently ejected first, so a route whose every target is ejected
    still tries one rather than failing blind.
  - Health: C{consecutiveFailures} failures in a row eject a target for
    C{ejection} seconds, doubled on each repeat up to L{MAX_EJECTION}; a
    success ends the streak and the doubling.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Callable, Generic, Sequence, TypeVar

from aigateway.config import Outlier, Target

__all__ = ["Health", "MAX_EJECTION", "Planner"]

MAX_EJECTION = 300.0

T = TypeVar("T")


class Health:
    """
    The passive health of one target of one route.

    @ivar failures: failures since the last success or ejection.
    @ivar ejections: ejections since the last success.
    @ivar ejectedUntil: when the current ejection ends (0 when none).
    @ivar ejectedAt: when it began.
    """

    def __init__(self) -> None:
        self.failures = 0
        self.ejections = 0
        self.ejectedUntil = 0.0
        self.ejectedAt = 0.0

    def ejected(self, now: float) -> bool:
        return now < self.ejectedUntil

    def failed(self, outlier: Outlier, now: float) -> bool:
        """
        Count a failure.

        @return: whether it ejected the target.
        """
        self.failures += 1
        if self.failures < outlier.consecutiveFailures:
            return False
        self.failures = 0
        self.ejections += 1
        self.ejectedAt = now
        self.ejectedUntil = now + min(outlier.ejection * 2 ** (self.ejections - 1), MAX_EJECTION)
        return True

    def succeeded(self) -> None:
        self.failures = 0
        self.ejections = 0
        self.ejectedUntil = 0.0


class Planner(Generic[T]):
    """
    Plans the attempts of a route's requests over its targets.

    @ivar upstreams: what each target stands for (the caller's objects),
        in the order of C{targets}.
    @ivar byModel: some target names the models it serves, so plans need
        the requested model.
    """

    def __init__(self, targets: Sequence[Target], upstreams: Sequence[T],
                 health: Sequence[Health]) -> None:
        self.targets = tuple(targets)
        self.upstreams = tuple(upstreams)
        self.health = tuple(health)
        self.byModel = any(t.models is not None for t in self.targets)
        self._all = tuple(range(len(self.targets)))
        self._pairs = tuple(zip(self.upstreams, self.health))
        self._groups: dict[tuple[int, ...], tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]] = {}
        self._unclaimed = tuple(i for i, t in enumerate(self.targets) if t.models is None)

    def serving(self, model: str | None) -> tuple[int, ...]:
        """
        The targets (by index) that serve C{model}.
        """
        if not self.byModel:
            return self._all
        if model is not None:
            claimed = tuple(i for i, t in enumerate(self.targets)
                            if t.models is not None and any(fnmatchcase(model, g) for g in t.models))
            if claimed:
                return claimed
        return self._unclaimed

    def plan(self, model: str | None, now: float, random: Callable[[], float],
             attempts: int) -> list[tuple[T, Health]]:
        """
        The upstreams to try, in order, C{attempts} of them (a target may
        come again when there are fewer targets than attempts); empty when
        no target serves C{model}.
        """
        serving = self.serving(model)
        if len(serving) == 1:
            return [self._pairs[serving[0]]] * attempts
        if not serving:
            return []
        health = self.health
        ejected = [i for i in serving if health[i].ejectedUntil > now]
        if ejected:
            groups = self._grouped(tuple(i for i in serving if i not in ejected))
        else:
            groups = self._groups.get(serving) or self._grouped(serving)
        order: list[int] = []
        for members, weights in groups:
            if len(members) == 1:
                order.append(members[0])
            else:
                order += _weightedOrder(list(members), list(weights), random)
        if ejected:
            order += sorted(ejected, key=lambda i: health[i].ejectedAt)
        pairs = self._pairs
        return [pairs[order[k % len(order)]] for k in range(attempts)]

    def _grouped(self, serving: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
        """
        C{serving} by priority, lowest first, each with its weights (kept
        for the sets that serve whole).
        """
        targets = self.targets
        groups = tuple(
            (members, tuple(targets[i].weight for i in members))
            for priority in sorted({targets[i].priority for i in serving})
            for members in [tuple(i for i in serving if targets[i].priority == priority)]
        )
        if len(self._groups) < 64:
            self._groups[serving] = groups
        return groups


def _weightedOrder(items: list[int], weights: list[int], random: Callable[[], float]) -> list[int]:
    """
    C{items} in a weighted random order: each next one drawn with a chance
    proportional to its weight among those left.
    """
    if len(items) < 2:
        return list(items)
    items, weights = list(items), list(weights)
    out: list[int] = []
    while items:
        total = sum(weights)
        point = random() * total
        for index, weight in enumerate(weights):
            point -= weight
            if point < 0 or index == len(weights) - 1:
                out.append(items.pop(index))
                weights.pop(index)
                break
    return out


