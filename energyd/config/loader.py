"""Load a YAML config into the schema, reporting every problem as FILE:LINE: path: message.

ruamel.yaml keeps the line of every key, so a pydantic error location such as
('devices', 2, 'modbus', 'port') is mapped back to the line a person has to edit.

Whatever the file holds, the answer is a ConfigError with a line, never a traceback: bytes
that are not UTF-8, characters YAML forbids (NUL), nesting deeper than any config needs,
aliases that expand beyond any config's size, and files far larger than a config are
refused with the line where the trouble starts.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import CollectionEndEvent, CollectionStartEvent, ScalarEvent

from energyd.config.schema import Config, ProblemsAt
from energyd.errors import ConfigError, Problem

# A plant of a thousand meters fits in a few hundred kB; these bound what a mistaken or
# hostile file can cost before it is refused.
MAX_BYTES = 4 * 2**20
MAX_DEPTH = 32
MAX_VALUES = 500_000

# What YAML does not allow in a stream: C0 controls but tab/LF/CR, DEL, C1 but NEL,
# surrogates, U+FFFE/F. ruamel stops at them with a ReaderError that gives an offset, not a
# line, so they are looked for first.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]")


def load_config(path: str | Path, *, runnable: bool = False) -> Config:
    """Parse and validate `path`; raise ConfigError listing every problem.

    `runnable` also checks what the daemon will need of the machine (a store path it can
    create and write), as `check-config` and `run` do before anything starts."""
    path = Path(path)
    text = read_text(path)
    return parse_config(text, str(path), base_dir=path.resolve().parent, runnable=runnable)


def read_text(path: Path) -> str:
    """A config or profile file's text, or a ConfigError saying where it cannot be one."""
    name = str(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError([Problem(name, None, "", f"cannot read: {exc.strerror}")]) from None
    if len(data) > MAX_BYTES:
        line = data[:MAX_BYTES].count(b"\n") + 1
        raise ConfigError([Problem(name, line, "", f"the file is larger than "
                                   f"{MAX_BYTES // 2**20} MiB: not a configuration")])
    return decode(data, name)


def decode(data: bytes, filename: str) -> str:
    """UTF-8 (a leading byte-order mark is allowed), or a ConfigError at the first bad byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError([Problem(filename, line, "",
                                   f"byte 0x{data[exc.start]:02x} is not UTF-8: save the file "
                                   "as UTF-8")]) from None


def parse_config(text: str, filename: str = "<config>", base_dir: Path | None = None,
                 *, runnable: bool = False) -> Config:
    tree = parse_yaml(text, filename)
    if tree is None:
        raise ConfigError([Problem(filename, 1, "", "the file is empty: a configuration needs "
                                   "at least `storage:` and `devices:`")])
    if not isinstance(tree, dict):
        raise ConfigError([Problem(filename, 1, "", "the top level must be a mapping")])
    plain = _plain_checked(tree, filename)
    try:
        config = Config.model_validate(plain, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_problems(exc, tree, filename)) from None
    if runnable:
        problems = [Problem(filename, *_locate(tree, loc), message)
                    for loc, message in storage_problems(config)]
        if problems:
            raise ConfigError(problems)
    return config


def storage_problems(config: Config) -> list[tuple[tuple[str, ...], str]]:
    """Can the daemon create and write its store where the config puts it? SQLite also
    writes -wal and -shm files beside it, so the directory must be writable too."""
    try:
        return _storage_problems(config.storage.path)
    except OSError as exc:  # a name the system refuses, a loop of links, ...
        return [(("storage", "path"), f"{config.storage.path}: {exc.strerror}")]


def _storage_problems(path: Path) -> list[tuple[tuple[str, ...], str]]:
    problems = _storage_checks(path)
    if problems and not str(path).isprintable():
        # a path with a line break or an escape sequence is shown escaped
        problems = [(loc, f"{str(path)!r}: cannot be used as the store's path")
                    for loc, _ in problems]
    return problems


def _storage_checks(path: Path) -> list[tuple[tuple[str, ...], str]]:
    loc = ("storage", "path")
    if path.is_dir():
        return [(loc, f"{path} is a directory: give the store file's path")]
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return [(loc, f"{path}: the store file exists but cannot be written")]
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return [(loc, f"{path}: {parent} is not a directory")]
    if not os.access(parent, os.W_OK | os.X_OK):
        missing = "" if parent == path.parent else f" (to create {path.parent})"
        return [(loc, f"{path}: the directory {parent} is not writable{missing}")]
    return []


def parse_yaml(text: str, filename: str) -> Any:
    if bad := _FORBIDDEN.search(text):
        line = text.count("\n", 0, bad.start()) + 1
        raise ConfigError([Problem(filename, line, "", f"character U+{ord(bad.group()):04X} "
                                   "is not allowed in YAML (is this a text file?)")])
    yaml = YAML(typ="rt")
    try:
        depth = 0
        # The event stream comes without recursion; composing it does not, so a depth that
        # would exhaust Python's stack is refused here first.
        for event in yaml.parse(text):
            if isinstance(event, CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ConfigError([Problem(filename, event.start_mark.line + 1, "",
                                               f"nested more than {MAX_DEPTH} levels deep")])
            elif isinstance(event, CollectionEndEvent):
                depth -= 1
        return yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        if len(message) > 300:  # ruamel quotes whole values (a duplicate key's, say)
            message = message[:297] + "..."
        raise ConfigError([Problem(filename, line, "", f"YAML syntax error: {message}")]) from None
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 -- whatever ruamel raises, the file is unreadable
        # A scalar the resolver takes for a number or a date it cannot build (an int of 5000
        # digits, 2024-02-30, `!!float x`) fails with ValueError, IndexError, OverflowError...
        # and no mark: the scalar is looked for.
        raise ConfigError([Problem(filename, _line_of(text), "",
                                   f"cannot read the YAML: {_reason(exc)}")]) from None


def _line_of(text: str) -> int:
    """The line of the first scalar that cannot be built on its own, else 1."""
    yaml = YAML(typ="rt")
    try:
        for event in YAML(typ="rt").parse(text):
            if not isinstance(event, ScalarEvent) or (event.style and not event.tag):
                continue
            alone = event.value if not event.tag else \
                f"!<{event.tag}> {json.dumps(event.value)}"
            try:
                yaml.load(alone)
            except Exception:  # noqa: BLE001 -- any failure is the one being located
                return event.start_mark.line + 1
    except YAMLError:
        pass
    return 1


def _reason(exc: BaseException) -> str:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "integer string conversion" in message:
        return "a number of more than 4300 digits"
    if not isinstance(exc, ValueError | YAMLError):  # ruamel's own slip, e.g. `!!float e`
        return f"a value here cannot be built as its type says ({message})"
    return message if len(message) <= 200 else message[:197] + "..."


def _plain_checked(tree: Any, filename: str) -> Any:
    """`_plain`, bounded: an alias that refers to itself or a chain of aliases that
    multiplies (a "billion laughs") is refused at the line of the value that overflows."""
    budget = [MAX_VALUES]

    def plain(node: Any, depth: int, line: int) -> Any:
        if isinstance(node, CommentedMap | CommentedSeq) and node.lc.line is not None:
            line = node.lc.line + 1
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_DEPTH:
            what = (f"more than {MAX_VALUES} values" if budget[0] < 0 else
                    f"more than {MAX_DEPTH} levels")
            raise ConfigError([Problem(filename, line, "", f"the aliases here expand to {what}: "
                                       "not a configuration")])
        if isinstance(node, dict):
            return {str(k): plain(v, depth + 1, line) for k, v in node.items()}
        if isinstance(node, list):
            return [plain(v, depth + 1, line) for v in node]
        return _plain(node)

    return plain(tree, 0, 1)


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


def _printable(key: str) -> str:
    """A key as a message shows it: one that holds a line break or an escape sequence would
    break the FILE:LINE layout or the terminal, so it is shown escaped, and shortened."""
    key = key if key.isprintable() else repr(key)
    return key if len(key) <= 60 else key[:57] + "..."


def _locate(tree: Any, loc: tuple[Any, ...]) -> tuple[int | None, str]:
    """Follow `loc` through the YAML tree: the line of the deepest key found, and its path."""
    line = 1
    node = tree
    parts: list[str] = []
    for i, key in enumerate(loc):
        if isinstance(node, CommentedMap) and isinstance(key, str):
            if key not in node and (key == node.get("type") or (
                    i + 1 < len(loc) and isinstance(loc[i + 1], str) and loc[i + 1] in node)):
                continue  # a union's branch name (its `type:` tag), not the user's key
            if key in node:
                line = node.lc.key(key)[0] + 1
                node = node[key]
                parts.append(_printable(key))
                continue
            if i + 1 < len(loc) or "=" in key:
                # a union's branch tag (`driver=modbus`), not a key of the file (a schema's
                # keys hold no `=`; a missing required key comes last)
                continue
            if node.lc.line is not None:
                line = node.lc.line + 1
            parts.append(_printable(key))  # a missing required key: its parent mapping
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
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ProblemsAt):
            # a model-level check: each problem at the value it names
            for loc, message in cause.problems:
                problems.append(Problem(filename, *_locate(tree, (*err["loc"], *loc)),
                                        message))
            continue
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
