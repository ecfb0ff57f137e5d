"""
Where rate-limit buckets live: this process's memory
(L{aigateway.state.memory}, the default) or a Redis server shared by every
gateway that names it (L{aigateway.state.redis}).
"""

from __future__ import annotations

from typing import Callable, Mapping

from twisted.internet.interfaces import IReactorTime

from aigateway.config import ConfigError, StateConfig
from aigateway.state.memory import BucketStore, MemoryBuckets

__all__ = ["storeFor"]


def storeFor(state: StateConfig, reactor: IReactorTime, environ: Mapping[str, str],
             onFallback: Callable[[str], None] = lambda reason: None) -> BucketStore:
    """
    The bucket store C{state} describes, not yet started.

    @param environ: where C{passwordFrom: {env: ...}} is read.
    @param onFallback: called with the reason each time the store could
        not decide (see L{aigateway.state.redis.RedisBuckets}).
    @raise ConfigError: when the password's variable is not set.
    """
    redis = state.redis
    if redis is None:
        return MemoryBuckets()
    from aigateway.state.redis import RedisBuckets

    password = redis.password
    if redis.passwordFrom is not None:
        password = environ.get(redis.passwordFrom.ref)
        if not password:
            raise ConfigError("state.redis.passwordFrom.env",
                              f"the environment variable {redis.passwordFrom.ref} is not set")
    return RedisBuckets(redis, state.onError, reactor, password, onFallback)
