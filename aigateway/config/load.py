"""
Reading a configuration file's text: a strict YAML loader (a key given
twice is an error) in front of L{parseConfig}.
"""

from __future__ import annotations

import yaml

from aigateway.config.parse import parseConfig
from aigateway.config.schema import Config, ConfigError

__all__ = ["loadConfig"]


# libyaml's parser when PyYAML was built with it: ten times faster on a
# thousand routes.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SafeLoader):  # type: ignore[misc,valid-type]
    """
    A safe YAML loader that refuses a key given twice in one mapping, which
    PyYAML would otherwise resolve silently to the last value.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        seen: set[object] = set()
        for keyNode, _ in node.value:
            key = self.construct_object(keyNode, deep=deep)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
            except TypeError:
                duplicate = False
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", keyNode.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping
)


def loadConfig(text: str | bytes) -> Config:
    """
    Parse the YAML text of a configuration file.

    @raise ConfigError: for YAML syntax errors (with line and column) and
        for everything L{parseConfig} refuses.
    """
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (safe loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError("", f"invalid YAML: {where}{problem}") from None
    if document is None:
        raise ConfigError("", "the file is empty")
    return parseConfig(document)
