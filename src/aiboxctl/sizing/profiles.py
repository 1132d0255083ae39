"""Use-case profiles (profiles/<name>.yaml): who uses the box and what they need from it.

``load_use_case("gov-office")`` returns a frozen :class:`UseCaseProfile`; a path to a YAML file
of the same shape works too. Every field error names the file, the line and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import ConfigDict, Field, with_config


from aiboxctl.datafile import FieldProblem, raise_problems, read_document, validate
from aiboxctl.resources import data_dir
from aiboxctl.sizing.profile_files import profile_text, shipped_names

Quality = Literal["low", "medium", "high"]
QUALITY_ORDER: dict[str, int] = {"low": 0, "medium": 1, "high": 2}

_STRICT = ConfigDict(extra="forbid")


@with_config(_STRICT)
@dataclass(frozen=True)
class SecuritySettings:
    bind: str = "127.0.0.1"
    api_key: bool = True
    audit_log: bool = True
    audit_content: bool = False  # log prompts/answers too (off: metadata only)
    # HTTPS at the front door (docs/install.md): None — on when the service binds beyond loopback;
    # true — on loopback too (an install then always runs the front door); false — never
    tls: Optional[bool] = None


@with_config(_STRICT)
@dataclass(frozen=True)
class ServiceSettings:
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    user: str = "aibox"


@with_config(_STRICT)
@dataclass(frozen=True)
class UseCaseProfile:
    name: str
    description: str
    users: Annotated[int, Field(ge=1, le=4096)]  # concurrent users → parallel slots
    context_per_request: Annotated[int, Field(ge=256, le=1_048_576)]  # tokens per slot
    target_tokens_per_s: Annotated[float, Field(gt=0)]  # decode speed each user should see
    # How far below the targets (speed, time to first token) a plan may land and still count,
    # reported as a near miss, before a lower-quality model or quantization is taken instead.
    speed_tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.10
    # A typical document a request brings (tokens), for profiles that read documents: its
    # prefill must finish within max_first_token_s. None: chat only, time to first token unchecked.
    document_tokens: Optional[Annotated[int, Field(ge=1, le=1_048_576)]] = None
    max_first_token_s: Annotated[float, Field(gt=0)] = 30.0
    language: str = "en"
    families: tuple[str, ...] = ()  # model families in order of preference
    min_quality: Quality = "medium"
    model: Optional[str] = None  # a pinned catalog variant
    # What the box serves: chat, plus an embedding model and a reranker for knowledge-base use
    # (RAG tools need all three; sizing/knowledge_base.py plans them beside the chat model),
    # each tried in the order of its list (catalog variants or families; empty: the catalog's).
    roles: tuple[Literal["chat", "embedding", "rerank"], ...] = ("chat",)
    embedding_models: tuple[str, ...] = ()
    rerank_models: tuple[str, ...] = ()
    security: SecuritySettings = field(default_factory=SecuritySettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)

    @property
    def total_context(self) -> int:
        return self.users * self.context_per_request

    def with_overrides(self, *, users: int | None = None, target_tokens_per_s: float | None = None,
                       context_per_request: int | None = None) -> "UseCaseProfile":
        """This profile with the command line's ``--users``, ``--target-tok-s`` and ``--ctx``,
        checked against the same bounds as the YAML fields (a bad value is a usage error)."""
        from aiboxctl.errors import UsageError

        checks = (("--users", users, 1, 4096), ("--ctx", context_per_request, 256, 1_048_576))
        for flag, value, lo, hi in checks:
            if value is not None and not lo <= value <= hi:
                raise UsageError(f"{flag} {value} is out of range ({lo}..{hi})", hint="aiboxctl plan --help")
        if target_tokens_per_s is not None and not target_tokens_per_s > 0:
            raise UsageError(f"--target-tok-s {target_tokens_per_s:g} must be above 0", hint="aiboxctl plan --help")
        if self.document_tokens and context_per_request is not None and context_per_request < self.document_tokens:
            raise UsageError(f"--ctx {context_per_request} is shorter than the profile's document_tokens "
                             f"{self.document_tokens}", hint="a --ctx of at least the document size")
        changes = {k: v for k, v in (("users", users), ("target_tokens_per_s", target_tokens_per_s),
                                     ("context_per_request", context_per_request)) if v is not None}
        return replace(self, **changes) if changes else self


def use_case_names() -> list[str]:
    return shipped_names(data_dir("profiles"), exclude=("catalog.yaml",))


def load_use_case(name_or_path: str | Path) -> UseCaseProfile:
    """A shipped profile by name (``gov-office``) or any YAML file of the same shape."""
    return _load(*profile_text(name_or_path, data_dir("profiles"), "profiles", kind="use-case profile",
                               hint="aiboxctl plan --profile demo", exclude=("catalog.yaml",)))


def _load(text: str, shown: str) -> UseCaseProfile:
    """Validate the shape, then the names: families and a pinned model must be in the catalog."""
    from aiboxctl.models.catalog import load_catalog

    doc = read_document(text, shown)
    profile = validate(doc, UseCaseProfile)
    catalog = load_catalog()
    problems: list[FieldProblem] = []
    for i, fam in enumerate(profile.families):
        if fam not in catalog.families:
            problems.append(doc.problem(("families", i), f"unknown model family {fam!r} (known: "
                                        + ", ".join(sorted(catalog.families)) + ")"))
    pinned = profile.model
    if pinned and not pinned.endswith(".gguf") and catalog.variant(pinned.split(":", 1)[0]) is None \
            and pinned not in catalog.families and pinned.lower() not in catalog.aliases:
        problems.append(doc.problem(("model",), f"{pinned!r} is not a catalog variant or family"))
    if profile.document_tokens and profile.document_tokens > profile.context_per_request:
        problems.append(doc.problem(("document_tokens",), f"{profile.document_tokens} tokens do not fit in "
                                    f"context_per_request {profile.context_per_request}"))
    if "chat" not in profile.roles or len(set(profile.roles)) != len(profile.roles):
        problems.append(doc.problem(("roles",), "roles lists chat and, at most once each, embedding and rerank"))
    for key, role in (("embedding_models", "embedding"), ("rerank_models", "rerank")):
        for i, name in enumerate(getattr(profile, key)):
            if name.endswith(".gguf"):  # a local file, planned from its own header like model:
                continue
            fam = catalog.variant(name).family if catalog.variant(name) else name
            if fam not in catalog.families or catalog.families[fam].role != role:
                problems.append(doc.problem((key, i), f"{name!r} is not a catalog {role} variant or family"))
    raise_problems(problems)
    return profile
