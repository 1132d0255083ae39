"""Render the appliance's files from templates/ (Jinja2, StrictUndefined).

Profile values are data, never code: every value goes through a filter that quotes it for the
file's own syntax (YAML, POSIX shell, systemd unit, logrotate). A newline, quote, ``%`` or
``$(...)`` in a profile therefore cannot add a directive, run a command or expand a specifier.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import Any

from aiboxctl.errors import AiboxError, UsageError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")
# Paths that appear unquoted in a unit (EnvironmentFile=, StandardOutput=append:) or in a
# logrotate file: the install prefix must not need quoting there.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+@:,=-]*$")


@dataclass(frozen=True)
class RenderedFile:
    """One file of the appliance: where it goes (absolute, under the prefix), its bytes, its mode
    and the user/group that should own it (None: whoever runs the install)."""

    path: str
    content: bytes
    mode: int
    owner: str | None = None
    group: str | None = None
    secret: bool = False  # never shown in a diff


def yaml_scalar(value: Any) -> str:
    """A YAML flow value: JSON is a subset of YAML, and json.dumps escapes every control character."""
    return json.dumps(value, ensure_ascii=False)


def sh_quote(value: Any) -> str:
    return shlex.quote(str(value))


def _c_escape(value: str) -> str:
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif _CONTROL.match(ch):
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def sd_quote(value: Any) -> str:
    """One word of a setting systemd unquotes and C-unescapes (Environment=, ReadWritePaths=):
    double-quoted, C-escaped, specifiers doubled."""
    return '"' + _c_escape(str(value)).replace("%", "%%") + '"'


def sd_quote_list(values: Any) -> str:
    return " ".join(sd_quote(v) for v in values)


def sd_exec(argv: Any) -> str:
    """ExecStart=: like sd_quote, and ``$`` doubled because ExecStart= expands $VAR and ${VAR}."""
    words = [str(a) for a in argv]
    if not words or not words[0].startswith("/"):
        raise UsageError(f"service command must be an absolute path, got {words[:1]}")
    return " ".join(sd_quote(w).replace("$", "$$") for w in words)


def sd_text(value: Any) -> str:
    """Free text (Description=): taken raw to the end of the line with specifiers expanded, so
    control characters become spaces, ``%`` is doubled and a backslash (line continuation) is
    replaced."""
    text = _CONTROL.sub(" ", str(value)).replace("\\", "/")
    return text.replace("%", "%%").strip()


def sd_name(value: Any) -> str:
    text = str(value)
    if not _NAME.match(text):
        raise UsageError(f"invalid service user or group name {text!r}",
                         hint="use lowercase letters, digits, '-' and '_' (service.user in the profile)")
    return text


def safe_path(value: Any) -> str:
    text = str(value)
    if not _SAFE_PATH.match(text):
        raise UsageError(f"path {text!r} contains characters a unit or logrotate file cannot hold unquoted",
                         hint="install under a prefix made of letters, digits and . _ - / only")
    return text


def sd_path(value: Any) -> str:
    return safe_path(value).replace("%", "%%")


def lr_path(value: Any) -> str:
    """A logrotate path pattern: a safe path, plus the ``*`` glob."""
    text = str(value)
    safe_path(text.replace("*", ""))
    return text


def environment():
    import jinja2

    from aiboxctl.resources import data_dir

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: (data_dir("templates") / name).read_text(encoding="utf-8")),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=False,
    )
    env.filters.update(yaml=yaml_scalar, sh=sh_quote, sd_quote=sd_quote, sd_quote_list=sd_quote_list,
                       sd_exec=sd_exec, sd_text=sd_text, sd_name=sd_name, sd_path=sd_path, lr_path=lr_path)
    return env


def render_template(name: str, context: dict[str, Any]) -> str:
    import jinja2

    try:
        return environment().get_template(name).render(**context)
    except jinja2.UndefinedError as exc:
        raise AiboxError(f"template {name}: {exc.message}", code="template_error") from exc
