"""Declarative YAML specs (tasks, feature sets) loaded into strict pydantic models, every problem with its line.

One loader for every kind of spec, so that all of them report errors the same way:
`task.yaml:7: label.within: the horizon must be positive ...`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from careloop.errors import CareloopError

M = TypeVar("M", bound=BaseModel)

# union branch names pydantic puts in error locations; they are not keys of the YAML
_BRANCHES = {"str", "AgeUnder"}
_MERGE = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeLoader reports it
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}, first given on line {first.start_mark.line + 1}",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_spec(path: str | Path, error: type[CareloopError], what: str) -> tuple[str, str]:
    """(text, source name) of a spec file, or `error` saying why it cannot be read."""
    path = Path(path)
    try:
        return path.read_text(), str(path)
    except OSError as exc:
        raise error(f"{path}: cannot read {what} file ({exc.strerror})") from None


def parse_spec(model: type[M], text: str, source: str, error: type[CareloopError]) -> M:
    """Validate YAML `text` as `model`; raise `error` listing every problem as `source:line: where: what`."""
    try:
        node = yaml.compose(text)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise error(f"{source}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise error(f"{source}:1: expected a mapping of fields (name, description, ...)")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [p for p in err["loc"] if not (isinstance(p, str) and p in _BRANCHES)]
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown field {loc[-1]!r}"
            where = ".".join(str(p) for p in loc) or "spec"
            problems.append(f"{source}:{line_of(node, loc)}: {where}: {msg}")
        raise error("\n".join(dict.fromkeys(problems))) from None


def line_of(node: yaml.Node | None, loc: list) -> int:
    """1-based line of the deepest YAML node on an error's path."""
    line = node.start_mark.line + 1 if node is not None else 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == key), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def find_spec(name_or_path: str | Path, env: str, folder: str, error: type[CareloopError], what: str) -> Path:
    """A spec file by path, or by name in the folders of `$env` and then the repository's `folder/`."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    dirs = [Path(d) for d in os.environ.get(env, "").split(os.pathsep) if d]
    dirs.append(Path(__file__).resolve().parents[2] / folder)
    for d in dirs:
        for suffix in (".yaml", ".yml"):
            if (d / f"{name_or_path}{suffix}").exists():
                return d / f"{name_or_path}{suffix}"
    known = sorted({f.stem for d in dirs if d.is_dir() for f in d.glob("*.y*ml")})
    raise error(f"unknown {what} {str(name_or_path)!r} (known: {', '.join(known) or 'none'})")
