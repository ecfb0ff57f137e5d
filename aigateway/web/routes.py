"""
The route table: the gateway's root resource.

The request's target is read once into its normal form
(L{aigateway.web.target.normalTarget}); the request's C{path} and C{uri} are set
to that form, so that the routes, the guard, the rules and the upstream
request all read the same thing, and a target with no safe normal form is a
400 here.  A request is matched on its path (an exact C{path} beats any C{pathPrefix};
among prefixes the longest wins, always on a segment boundary), then
narrowed by C{methods} and C{headers}.  Lookup costs one dictionary probe
per segment of the request's path, however many routes there are.
"""

from __future__ import annotations

from typing import Sequence

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest

from aigateway.config import Match, Route
from aigateway.llm.provider import clientAPI
from aigateway.observe.record import IExchange
from aigateway.observe.report import Exchange, Telemetry
from aigateway.web.errors import refuse
from aigateway.web.target import TargetError, normalTarget

__all__ = ["RouteTable", "renderChild"]

_Entry = tuple[Route, IResource]
log = Logger()


def _accepts(match: Match, request: IRequest) -> bool:
    if match.methods is not None and request.method.decode("latin-1") not in match.methods:
        return False
    headers = request.requestHeaders
    for name, value in match.headers:
        # Compared as bytes: a header that is not UTF-8 simply does not match.
        raw = headers.getRawHeaders(name.encode("ascii"))
        if not raw or raw[-1] != value.encode("utf-8"):
            return False
    return True


class RouteTable(Resource):
    """
    The root resource: reads the request's target into its normal form,
    starts the request's record (as its L{IExchange} component), finds the
    route and hands the request to that route's resource, with the route's
    prefix in C{prepath} and the rest of the path in C{postpath}.

    @ivar routes: the routes in configuration order.
    """

    isLeaf = True

    def __init__(self, entries: Sequence[_Entry], telemetry: Telemetry) -> None:
        super().__init__()
        self.telemetry = telemetry
        self.routes = tuple(route for route, _ in entries)
        self._exact: dict[bytes, list[_Entry]] = {}
        self._prefix: dict[bytes, list[_Entry]] = {}
        self._depth: dict[str, int] = {}
        for route, resource in entries:
            match = route.match
            if match.path is not None:
                key = match.path.encode("utf-8")
                self._exact.setdefault(key, []).append((route, resource))
            else:
                assert match.pathPrefix is not None
                key = match.pathPrefix.rstrip("/").encode("utf-8")
                self._prefix.setdefault(key, []).append((route, resource))
            self._depth[route.name] = key.count(b"/")

    def find(self, request: IRequest) -> _Entry | None:
        """
        The route and resource that take C{request}, if any.
        """
        path = request.path
        for route, resource in self._exact.get(path, ()):
            if _accepts(route.match, request):
                return route, resource
        prefixes = self._prefix
        if not prefixes:
            return None
        end = len(path)
        while end >= 0:
            for route, resource in prefixes.get(path[:end], ()):
                if _accepts(route.match, request):
                    return route, resource
            if end == 0:
                break
            end = path.rfind(b"/", 0, end)
        return None

    def render(self, request: IRequest) -> bytes | int:
        exchange = self.telemetry.begin(request)
        request.setComponent(IExchange, exchange)
        request.notifyFinish().addBoth(self._finished, request, exchange)
        try:
            path, query = normalTarget(request.uri)
        except TargetError as e:
            return refuse(request, 400, e.message, "invalid_path")
        request.path = path
        request.uri = path + b"?" + query if query else path
        exchange.path = path.decode("ascii")
        found = self.find(request)
        if found is None:
            return refuse(
                request,
                404,
                f"no route for {request.method.decode('latin-1')} "
                f"{request.path[:200].decode('latin-1')}",
                "route_not_found",
            )
        route, resource = found
        exchange.route = route.name
        segments = path[1:].split(b"/")
        depth = self._depth[route.name]
        request.prepath, request.postpath = segments[:depth], segments[depth:]
        if route.match.pathPrefix is not None and b"messages" in path[-23:].lower():
            exchange.api = clientAPI(path[len(b"/".join(request.prepath)) + 1:])
        return renderChild(resource, request)

    def _finished(self, result: object, request: IRequest, exchange: Exchange) -> None:
        try:
            self.telemetry.finish(exchange, request.code, not isinstance(result, Failure))
        except Exception:
            log.failure("reporting {path}", path=request.path)


def renderChild(resource: IResource, request: IRequest) -> bytes | int:
    """
    Render C{request} with C{resource}, or with the child of it that the
    rest of the request's path names: how a stage hands a request on.
    """
    if resource.isLeaf:
        return resource.render(request)
    return getChildForRequest(resource, request).render(request)
