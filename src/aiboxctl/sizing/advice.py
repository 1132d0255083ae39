"""When nothing fits: the closest option, and what would make it fit (more memory or speed,
fewer users, a shorter context, a lower speed target), as a :class:`~aiboxctl.errors.DoesNotFit`."""

from __future__ import annotations

from dataclasses import replace

from aiboxctl.errors import DoesNotFit, UsageError
from aiboxctl.jsonable import to_jsonable
from aiboxctl.models.catalog import Catalog, QuantFile, Variant
from aiboxctl.models.facts import ModelFacts
from aiboxctl.sizing.box import Box
from aiboxctl.sizing.configs import engine_configs
from aiboxctl.sizing.fit import Outcome, check, gib
from aiboxctl.sizing.plan_result import Rejected
from aiboxctl.sizing.profiles import UseCaseProfile


def does_not_fit(profile: UseCaseProfile, box: Box, outcomes, rejected: list[Rejected], catalog: Catalog,
                  notes: list[str]) -> None:
    if not outcomes:
        reasons = sorted({r.kind for r in rejected})
        if not rejected:
            raise UsageError(f"no catalog file matches the requested model and quantization for {profile.name}",
                             hint="see the quantizations of the variant in profiles/catalog.yaml")
        raise DoesNotFit(f"no catalog model is eligible for profile {profile.name} on {box.name} "
                         f"(rejected for: {', '.join(reasons) or 'no candidates'})",
                         hint="aiboxctl plan --profile NAME --model FAMILY, or lower min_quality in the profile",
                         data={"rejected": [to_jsonable(r) for r in rejected]})
    v, f, out, facts = min(outcomes, key=lambda t: _distance(t[2]))
    suggestions = _suggestions(profile, box, v, f, out, facts)
    late = [r for r in rejected if r.kind == "ttft"]
    if late and out.kind != "ttft":
        suggestions.append(f"{len(late)} candidate(s) fit but read a {profile.document_tokens}-token document too "
                           f"slowly (first token after more than {profile.max_first_token_s:g} s): a smaller "
                           "document_tokens or a larger max_first_token_s in the profile would accept them")
    closest = {"variant": v.name, "quant": f.quant, "reason": out.reason,
               "config": out.config.label if out.config else None, "needed": out.needed,
               "per_user_tok_s": round(out.throughput.per_user_tok_s, 2) if out.throughput else None}
    message = f"nothing fits profile {profile.name} on {box.name}: closest is {v.name} {f.quant}: {out.reason}"
    raise DoesNotFit(message, hint="; ".join(suggestions[:3]) if suggestions else "aiboxctl plan --help",
                     data={"closest": closest, "suggestions": suggestions,
                           "rejected": [to_jsonable(r) for r in rejected], "notes": notes})


def _distance(o: Outcome) -> tuple:
    if o.kind == "speed" and o.throughput:
        return (0, -o.throughput.per_user_tok_s)
    if o.kind == "ttft" and o.first_token_s is not None:
        return (0, o.first_token_s)
    return (1, o.overshoot)


def _suggestions(profile: UseCaseProfile, box: Box, v: Variant, f: QuantFile, out: Outcome,
                 facts: ModelFacts) -> list[str]:
    out_list: list[str] = []
    devices = out.devices

    def works(p: UseCaseProfile) -> bool:
        for cfg in engine_configs(facts, box, p, devices):
            if check(facts, cfg, box, p, v.active * 1e9, devices).ok:
                return True
        return False

    if out.kind == "memory":
        short = {d: n["needed"] - n["budget"] for d, n in out.needed.items() if n["needed"] > n["budget"]}
        tp = out.throughput
        slow = (f", but at ~{tp.per_user_tok_s:.1f} tok/s per user it would still miss the target of "
                f"{profile.target_tokens_per_s:g}") if tp and tp.per_user_tok_s < profile.target_tokens_per_s else ""
        for d, s in short.items():
            where = "RAM" if d == "host" else d
            out_list.append(f"{gib(s)} more {where} would fit {v.name} {f.quant}{slow}")
    else:
        tp = out.throughput
        if tp and tp.per_user_tok_s > 0:
            what = "compute" if tp.bound == "compute" else "memory bandwidth"
            out_list.append(f"{profile.target_tokens_per_s / tp.per_user_tok_s:.1f}x the {what} would "
                            f"reach {profile.target_tokens_per_s:g} tok/s per user with {v.name} {f.quant}")
    # Fewer users (same context each), then a smaller context (same users).
    users = profile.users
    while users > 1:
        users = users // 2 if users > 3 else users - 1
        if works(replace(profile, users=users)):
            out_list.append(f"--users {users} instead of {profile.users} would fit")
            break
    ctx = profile.context_per_request
    while ctx // 2 >= max(1024, profile.document_tokens or 0):  # the profile's document must still fit
        ctx //= 2
        if works(replace(profile, context_per_request=ctx)):
            out_list.append(f"--ctx {ctx} (tokens per request) instead of {profile.context_per_request} would fit")
            break
    if out.kind == "ttft" and profile.document_tokens:
        out_list.append(f"a first-token limit of {out.first_token_s:.0f} s instead of {profile.max_first_token_s:g} "
                        "(max_first_token_s in the profile) would accept it")
    if profile.target_tokens_per_s > 1 and out.kind == "speed":
        target = profile.target_tokens_per_s
        while target > 1:
            target = max(1.0, target / 2)
            if works(replace(profile, target_tokens_per_s=target)):
                out_list.append(f"--target-tok-s {target:g} instead of {profile.target_tokens_per_s:g} "
                                "would fit")
                break
    return out_list
