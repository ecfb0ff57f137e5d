"""
The request's record as a request component: the route table puts the
L{aigateway.observe.report.Exchange} of a request on it with
C{request.setComponent(IExchange, exchange)}, and every stage that has
something to say about the request writes it there, for the report.
"""

from __future__ import annotations

from zope.interface import Interface

__all__ = ["IExchange"]


class IExchange(Interface):
    """
    The record of one request, filled in as it passes the chain and read
    when the request is reported.
    """
