"""Load a YAML data file (profile, hardware profile, catalog) into a frozen dataclass, and
report every mistake as ``file:line: field: what is wrong``. A foundation module: the catalog
(models/) and the profiles (sizing/) both read their files through it.

Validation is pydantic's (types, enums, unknown keys); this module only adds what pydantic
cannot know: *where* in the YAML a field is. The YAML is composed into a node tree first, so
each validation error's location (``security.api_key``, ``quants[2].size``) is walked back
to the node and its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator

from aiboxctl.errors import AiboxError

T = TypeVar("T")


class DataFileError(AiboxError):
    """A profile, hardware profile or catalog file that is not valid YAML or not valid data."""

    code = "invalid_data_file"


@dataclass(frozen=True)
class FieldProblem:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


@dataclass(frozen=True)
class Document:
    """Parsed YAML plus its node tree, so later checks can also name lines."""

    name: str
    data: Any
    root: Any  # yaml.Node

    def line_of(self, loc: tuple) -> int | None:
        return _line_of(self.root, loc)

    def problem(self, loc: tuple, message: str) -> FieldProblem:
        return FieldProblem(self.name, self.line_of(loc), _dotted(loc), message)


# --- sizes ---------------------------------------------------------------------------------

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_size(value: Any) -> int:
    """``24 GiB``, ``80 GB``, ``1.5TiB`` or a plain integer → bytes."""
    if isinstance(value, bool):
        raise ValueError("a size, e.g. 24 GiB or 80 GB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2).lower() in _UNITS:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError(f"not a size: {value!r} (write e.g. 24 GiB, 80 GB or a byte count)")


# An int field that also accepts "24 GiB" / "80 GB".
SizeBytes = Annotated[int, BeforeValidator(parse_size)]


# --- loading ----------------------------------------------------------------------------------


def read_document(text: str, name: str) -> Document:
    import yaml

    # libyaml's loader when built in (10x faster on the catalog); both keep node marks.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        raise DataFileError(str(FieldProblem(name, line, "", f"invalid YAML: {problem}")),
                            hint="fix the YAML syntax at that line") from None
    except yaml.YAMLError as exc:
        raise DataFileError(f"{name}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return Document(name=name, data=data, root=root)


def validate(doc: Document, cls: type[T], *, context: dict | None = None) -> T:
    """Validate ``doc.data`` as ``cls`` (a dataclass pydantic understands)."""
    from pydantic import ValidationError

    if not isinstance(doc.data, dict):
        raise DataFileError(str(FieldProblem(doc.name, 1, "", "expected a mapping at the top level")))
    try:
        return _adapter(cls).validate_python(doc.data, context=context)
    except ValidationError as exc:
        problems = [_problem_from_error(doc, err) for err in exc.errors()]
        raise_problems(problems)
    raise AssertionError("unreachable")  # pragma: no cover


_ADAPTERS: dict[type, Any] = {}


def _adapter(cls: type) -> Any:
    from pydantic import TypeAdapter

    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


def raise_problems(problems: list[FieldProblem]) -> None:
    if not problems:
        return
    first = str(problems[0])
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise DataFileError(first + more, hint="fix the file; every problem is listed in --json errors data",
                        data={"problems": [str(p) for p in problems]})


def _problem_from_error(doc: Document, err: dict) -> FieldProblem:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind = err["type"]
    if kind in ("missing", "missing_argument", "missing_keyword_argument"):
        return FieldProblem(doc.name, doc.line_of(loc[:-1]), _dotted(loc), "required field is missing")
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return FieldProblem(doc.name, doc.line_of(loc), _dotted(loc), "unknown field")
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    return FieldProblem(doc.name, doc.line_of(loc), _dotted(loc), message)


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _line_of(node: Any, loc: tuple) -> int | None:
    import yaml

    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part):
                    line = key_node.start_mark.line + 1
                    node = value_node
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
