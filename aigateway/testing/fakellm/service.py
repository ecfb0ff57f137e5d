"""
C{twistd fakellm}: its options, and the quiet site it listens with.
"""

from __future__ import annotations

import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.python import usage
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from aigateway import __version__
from aigateway.testing.fakellm.resource import FakeLLM

__all__ = ["Options", "makeService"]


class _Channel(HTTPChannel):
    """
    An HTTP/1.1 channel with Nagle's algorithm off, so stream chunks leave
    as they are written, and that closes idle connections without a word:
    a client that keeps a connection open is no news to the fake LLM.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        setTcpNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setTcpNoDelay is not None:
            setTcpNoDelay(True)

    def timeoutConnection(self) -> None:
        # HTTPChannel.timeoutConnection without its "Timing out client" line.
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()


class _Site(Site):
    """
    A site without an access log: the benchmarks drive it hard.
    """

    protocol = _Channel  # type: ignore[assignment]
    displayTracebacks = False
    noisy = False

    def log(self, request: Request) -> None:
        pass


class Options(usage.Options):
    """
    Options for C{twistd fakellm}.
    """

    optParameters = [
        ["listen", "l", "tcp:9000", "A Twisted server endpoint to listen on."],
        ["key", "k", None, "Require KEY on every request, where each API carries its key."],
        ["aws-access-key-id", None, None,
         "Verify Bedrock requests' SigV4 signatures as made with this access key id."],
        ["aws-secret-access-key", None, None,
         "The secret access key that goes with --aws-access-key-id."],
    ]

    # Without one, usage.Options shows the docstring of whatever __main__ is.
    longdesc = "Run the fake LLM, which answers every provider's API; docs/operations.md describes it."

    def opt_version(self) -> None:
        """
        Display aigateway's version and exit.
        """
        print(f"aigateway {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        """
        Both AWS credentials or neither.
        """
        if (self["aws-access-key-id"] is None) != (self["aws-secret-access-key"] is None):
            raise usage.UsageError(
                "--aws-access-key-id and --aws-secret-access-key go together: give both or neither."
            )


def makeService(options: Options) -> IService:
    """
    The fake LLM listening where C{options} says.

    @param options: parsed L{Options}.
    @return: a service that listens while it runs.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    fakellm = FakeLLM(reactor, key=options["key"],
                      awsAccessKeyId=options["aws-access-key-id"],
                      awsSecretAccessKey=options["aws-secret-access-key"])
    site = _Site(fakellm, logPath=None)
    return StreamServerEndpointService(serverFromString(reactor, options["listen"]), site)
