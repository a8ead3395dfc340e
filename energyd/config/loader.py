"""Load a YAML config into the schema, reporting every problem as FILE:LINE: path: message.

ruamel.yaml keeps the line of every key, so a pydantic error location such as
('devices', 2, 'modbus', 'port') is mapped back to the line a person has to edit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from energyd.config.schema import Config
from energyd.errors import ConfigError, Problem


def load_config(path: str | Path) -> Config:
    """Parse and validate `path`; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(str(path), None, "", f"cannot read: {exc.strerror}")]) from None
    return parse_config(text, str(path), base_dir=path.resolve().parent)


def parse_config(text: str, filename: str = "<config>", base_dir: Path | None = None) -> Config:
    tree = _parse_yaml(text, filename)
    if tree is None:
        tree = CommentedMap()
    if not isinstance(tree, dict):
        raise ConfigError([Problem(filename, 1, "", "the top level must be a mapping")])
    try:
        config = Config.model_validate(_plain(tree), context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_problems(exc, tree, filename)) from None
    located = config.located_problems()
    if located:
        problems = []
        for loc, message in located:
            line, path = _locate(tree, loc)
            problems.append(Problem(filename, line, path, message))
        raise ConfigError(sorted(problems, key=lambda p: (p.line or 0, p.path)))
    return config


def _parse_yaml(text: str, filename: str) -> Any:
    yaml = YAML(typ="rt")
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise ConfigError([Problem(filename, line, "", f"YAML syntax error: {message}")]) from None


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


def _locate(tree: Any, loc: tuple[Any, ...]) -> tuple[int | None, str]:
    """Follow `loc` through the YAML tree: the line of the deepest key found, and its path."""
    line = 1
    node = tree
    parts: list[str] = []
    for key in loc:
        if isinstance(node, CommentedMap) and isinstance(key, str):
            if key in node:
                line = node.lc.key(key)[0] + 1
                node = node[key]
                parts.append(key)
                continue
            if node.lc.line is not None:
                line = node.lc.line + 1
            parts.append(key)  # a missing required key: point at its parent mapping
            break
        if isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node):
            line = node.lc.item(key)[0] + 1
            node = node[key]
            parts[-1:] = [f"{parts[-1]}[{key}]" if parts else f"[{key}]"]
            continue
        # pydantic adds union branch names and the like: not part of the user's path
        continue
    return line, ".".join(parts)


def _problems(exc: ValidationError, tree: Any, filename: str) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        line, path = _locate(tree, tuple(err["loc"]))
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (check its spelling)"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        elif message.startswith("Assertion failed, "):
            message = message.removeprefix("Assertion failed, ")
        problems.append(Problem(filename, line, path, message))
    return sorted(problems, key=lambda p: (p.line or 0, p.path))
