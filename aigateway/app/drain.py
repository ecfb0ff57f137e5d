"""
A graceful stop: stop accepting, let what is in flight finish for a while,
then let go.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from aigateway.observe.report import InFlight
from aigateway.web.site import GatewaySite

__all__ = ["Drain", "within"]

# The gateway service's namespace, which these lines have always had.
log = Logger(namespace="aigateway.app.service")


async def within(d: Deferred[Any], deadline: float, clock: IReactorTime) -> bool:
    """
    Wait for C{d} until C{deadline}, and cancel it then.

    @return: whether C{d} fired in time.
    """
    try:
        await d.addTimeout(max(0.0, deadline - clock.seconds()), clock)
    except TimeoutError:
        return False
    return True


class Drain(MultiService):
    """
    The stop of a site: its children (the site's listeners) stop accepting,
    the requests in flight get up to C{timeout()} seconds to finish, and
    then the site's connections are closed once their last bytes are sent
    (the reactor's own shutdown would drop what is still buffered).

    @ivar deadline: when the drain that is under way gives up, or L{None}.
    """

    def __init__(self, site: GatewaySite, inFlight: InFlight, clock: IReactorTime,
                 timeout: Callable[[], float]) -> None:
        super().__init__()
        self.site = site
        self.inFlight = inFlight
        self.clock = clock
        self.timeout = timeout
        self.deadline: float | None = None

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        await super().stopService()
        self.deadline = deadline = self.clock.seconds() + self.timeout()
        if self.inFlight.count:
            log.info("draining {count} requests in flight", count=self.inFlight.count)
            if not await within(self.inFlight.whenIdle(), deadline, self.clock):
                log.warn("{count} requests still in flight at shutdown", count=self.inFlight.count)
        await within(self.site.closeChannels(), deadline, self.clock)
