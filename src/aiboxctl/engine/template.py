"""Chat templates: the GGUF's ``tokenizer.chat_template`` rendered in jinja2's sandbox; if the
GGUF has none, the catalog's template for the model's family; else a clear start-up error.

Rendering settings follow Hugging Face transformers (``trim_blocks``, ``lstrip_blocks``,
``raise_exception``, ``tojson``), which the templates shipped in GGUFs are written for.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiboxctl.errors import UsageError

if TYPE_CHECKING:
    from aiboxctl.engine.config import EngineConfig
    from aiboxctl.engine.llama import LlamaRuntime


class TemplateError(Exception):
    """The template refused the messages (``raise_exception``) or failed to render."""


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # "config", "gguf", "catalog:<name>"
    text: str
    bos_token: str
    eos_token: str

    def compile(self) -> "CompiledTemplate":
        return CompiledTemplate(self)


class CompiledTemplate:
    def __init__(self, spec: ChatTemplate) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        def strftime_now(fmt: str) -> str:
            return datetime.datetime.now().strftime(fmt)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = lambda v, indent=None, **_: json.dumps(v, ensure_ascii=False, indent=indent)
        env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
        self.spec = spec
        self._template = env.from_string(spec.text)

    def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
               **extra: Any) -> str:
        from jinja2 import TemplateError as JinjaError

        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.spec.bos_token, eos_token=self.spec.eos_token,
                                         **extra)
        except TemplateError:
            raise
        except JinjaError as exc:
            raise TemplateError(f"chat template failed: {exc}") from None


def _catalog_template(config: "EngineConfig", rt: "LlamaRuntime") -> tuple[str, str] | None:
    """(name, jinja) of the catalog's fallback template for this model, or None."""
    try:
        from aiboxctl.models.catalog import load_catalog

        cat = load_catalog()
    except Exception:  # noqa: BLE001 - no catalog in this installation: no fallback
        return None
    variant = None
    if config.model_name:
        variant = cat.variant(config.model_name)
    if variant is None:  # by the file name the catalog knows it under
        fname = Path(config.model).name.lower()
        for v in cat.variants:
            if any(Path(str(getattr(f, "file", "") or "")).name.lower() == fname for f in v.files):
                variant = v
                break
    if variant is None:  # by architecture: the first variant of the same arch
        arch = (rt.meta("general.architecture") or "").lower()
        for v in cat.variants:
            if v.architecture.arch.lower() == arch:
                variant = v
                break
    if variant is None:
        return None
    name = variant.chat_template or cat.families[variant.family].chat_template
    return f"catalog:{name}", cat.chat_templates[name].jinja


def resolve_chat_template(config: "EngineConfig", rt: "LlamaRuntime") -> ChatTemplate:
    """Pick the template at start-up, so a model without one fails here and not per request."""
    bos = rt.token_text(rt.bos_token) if rt.bos_token >= 0 else ""
    eos = rt.token_text(rt.eos_token) if rt.eos_token >= 0 else ""
    if config.chat_template:
        text = config.chat_template
        source = "config"
        if "{" not in text:  # a catalog template name or a file
            named = _named_catalog_template(text)
            if named is not None:
                source, text = f"catalog:{text}", named
            elif Path(text).expanduser().is_file():
                source, text = f"file:{text}", Path(text).expanduser().read_text(encoding="utf-8")
            else:
                raise UsageError(f"chat_template {text!r} is neither a catalog template, a file nor Jinja text")
        spec = ChatTemplate(source, text, bos, eos)
    elif (gguf := rt.chat_template()):
        spec = ChatTemplate("gguf", gguf, bos, eos)
    elif (fallback := _catalog_template(config, rt)) is not None:
        spec = ChatTemplate(fallback[0], fallback[1], bos, eos)
    else:
        raise UsageError(f"{Path(config.model).name} has no chat template and the catalog has none for it",
                         hint="set chat_template in the engine config (Jinja text or a catalog template name)")
    try:
        spec.compile()
    except Exception as exc:  # noqa: BLE001 - a syntax error in the template is a start-up error
        raise UsageError(f"chat template ({spec.source}) does not compile: {exc}") from None
    return spec


def _named_catalog_template(name: str) -> str | None:
    try:
        from aiboxctl.models.catalog import load_catalog

        t = load_catalog().chat_templates.get(name)
    except Exception:  # noqa: BLE001
        return None
    return t.jinja if t is not None else None
