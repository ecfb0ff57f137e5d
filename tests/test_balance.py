"""
The plan of a request over a route's targets, without a reactor.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from aigateway.config import Backend, ConfigError, Outlier, Target, parseConfig
from aigateway.web.balance import MAX_EJECTION, Health, Planner


def _target(name: str, **fields) -> Target:
    return Target(Backend(name, "openai", f"http://{name}", None, None), **fields)


def _planner(*targets: Target) -> Planner:
    return Planner(targets, [t.backend.name for t in targets], [Health() for _ in targets])


class PlanTests(SynchronousTestCase):
    """
    Which targets, in which order.
    """

    def test_priorities(self) -> None:
        """
        Lower priorities come first, whatever the weights.
        """
        planner = _planner(_target("b", priority=1, weight=100), _target("a"))
        for _ in range(20):
            self.assertEqual([u for u, _ in planner.plan(None, 0, random.random, 2)], ["a", "b"])

    def test_attemptsCycle(self) -> None:
        """
        More attempts than targets try them again in order.
        """
        planner = _planner(_target("a"))
        self.assertEqual([u for u, _ in planner.plan(None, 0, random.random, 3)], ["a", "a", "a"])

    def test_weightedFirst(self) -> None:
        """
        The first target is drawn by weight.
        """
        planner = _planner(_target("a", weight=1), _target("b", weight=4))
        dice = random.Random(7)
        firsts = [planner.plan(None, 0, dice.random, 1)[0][0] for _ in range(5000)]
        self.assertLess(abs(firsts.count("b") / 5000 - 0.8), 0.03)

    def test_models(self) -> None:
        """
        Globs claim models; unclaimed models and unknown ones go to the
        targets without models.
        """
        planner = _planner(_target("any"), _target("claude", models=("claude-*",)))
        self.assertEqual(planner.serving("claude-3"), (1,))
        self.assertEqual(planner.serving("gpt-4o"), (0,))
        self.assertEqual(planner.serving(None), (0,))
        only = _planner(_target("claude", models=("claude-*",)))
        self.assertEqual(only.plan("gpt-4o", 0, random.random, 1), [])

    def test_ejectedLast(self) -> None:
        """
        Ejected targets come after healthy ones, least recently ejected
        first.
        """
        planner = _planner(_target("a"), _target("b"), _target("c", priority=1))
        outlier = Outlier(consecutiveFailures=1, ejection=10)
        planner.health[1].failed(outlier, 1.0)
        planner.health[0].failed(outlier, 2.0)
        self.assertEqual([u for u, _ in planner.plan(None, 3.0, random.random, 3)], ["c", "b", "a"])
        self.assertEqual([u for u, _ in planner.plan(None, 12.5, random.random, 3)][2], "c")


class HealthTests(SynchronousTestCase):
    """
    Ejection and its end.
    """

    def test_doubling(self) -> None:
        """
        Each ejection lasts twice the last, up to five minutes; a success
        ends the streak.
        """
        health = Health()
        outlier = Outlier(consecutiveFailures=2, ejection=30)
        self.assertFalse(health.failed(outlier, 0))
        self.assertTrue(health.failed(outlier, 0))
        self.assertEqual(health.ejectedUntil, 30)
        durations = []
        for start in (100, 200, 300, 400, 500):
            health.failed(outlier, start)
            health.failed(outlier, start)
            durations.append(health.ejectedUntil - start)
        self.assertEqual(durations, [60, 120, 240, MAX_EJECTION, MAX_EJECTION])
        health.succeeded()
        health.failed(outlier, 1000)
        health.failed(outlier, 1000)
        self.assertEqual(health.ejectedUntil, 1030)


def _config(route: str) -> dict:
    return {"listen": "tcp:0", "backends": {"a": {"provider": "openai"}, "b": {"provider": "openai"}},
            "routes": [dict({"name": "r", "match": {"pathPrefix": "/r"}}, **route)]}


class ConfigTests(SynchronousTestCase):
    """
    The route keys of several backends.
    """

    def test_defaults(self) -> None:
        """
        A list of backends tries each once, up to three; C{backend:} once.
        """
        two = parseConfig(_config({"backends": [{"backend": "a"}, {"backend": "b"}]})).routes[0]
        self.assertEqual(two.retries.attempts, 2)
        self.assertEqual([t.backend.name for t in two.targets], ["a", "b"])
        one = parseConfig(_config({"backend": "a"})).routes[0]
        self.assertEqual(one.retries.attempts, 1)
        self.assertEqual(one.timeout, 1800)

    def test_errors(self) -> None:
        """
        Bad values are errors naming the field.
        """
        cases = [
            ({"backends": [{"backend": "c"}]}, "routes[0].backends[0].backend: no backend named 'c'"),
            ({"backends": []}, "routes[0].backends: must be a non-empty list"),
            ({"backends": [{"backend": "a"}, {"backend": "a"}]}, "routes[0].backends[1].backend: backend 'a' is listed twice"),
            ({"backends": [{"backend": "a", "weight": 0}]}, "routes[0].backends[0].weight"),
            ({"backends": [{"backend": "a", "wieght": 2}]}, "routes[0].backends[0].wieght: unknown key (did you mean 'weight'?)"),
            ({"backend": "a", "retries": {"attempts": 11}}, "routes[0].retries.attempts: must be at most 10"),
            ({"backend": "a", "retries": {"on": ["404"]}}, "routes[0].retries.on[0]"),
            ({"backend": "a", "timeouts": {"idle": "0s"}}, "routes[0].timeouts.idle"),
            ({"backend": "a", "outlier": {"ejection": 5}}, "routes[0].outlier.ejection"),
            ({"backend": "a", "backends": [{"backend": "b"}]}, "routes[0]: must have exactly one of backend, backends"),
        ]
        for route, message in cases:
            with self.assertRaises(ConfigError) as caught:
                parseConfig(_config(route))
            self.assertTrue(str(caught.exception).startswith(message), str(caught.exception))
