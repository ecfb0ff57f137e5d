"""
The package's layers import one way: app -> build -> web ->
auth/llm/http/state/observe -> config, so a change low in the stack never needs
the code above it.  Read from the source, so a function-local import
counts too.
"""

from __future__ import annotations

import ast
import os

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "aigateway")

# What each home may import from the others (itself always).
ALLOWED = {
    "config": set(),
    "auth": {"config"},
    "llm": {"config"},
    "http": set(),
    "observe": {"config", "http"},
    "state": {"config"},
    "testing": set(),
    "web": {"config", "auth", "llm", "http", "state", "observe"},
    "build": {"config", "auth", "llm", "http", "state", "observe", "web"},
    "app": {"config", "auth", "llm", "http", "state", "observe", "web", "build", "logs"},
    "logs": set(),
    "__main__": {"config", "build", "app"},
}


def _imports(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aigateway."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("aigateway."))
    return found


class LayerTests(SynchronousTestCase):
    """
    No module imports from a layer above its own.
    """

    def test_importsPointDown(self) -> None:
        """
        Every module of every home imports only from the homes below it.
        """
        seen = set()
        for directory, _, files in os.walk(PACKAGE):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(directory, name)
                relative = os.path.relpath(path, PACKAGE)
                home = relative.split(os.sep)[0].removesuffix(".py")
                if home == "__init__":
                    continue
                seen.add(home)
                wrong = _imports(path) - ALLOWED[home] - {home}
                self.assertEqual(wrong, set(), f"{relative} imports from {sorted(wrong)}")
        self.assertEqual(seen, set(ALLOWED))
