"""``aiboxctl install``, ``uninstall``, ``upgrade``, ``rollback``: the install transaction and its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt, RootOpt, YesOpt, port_option
from aiboxctl.cli.plan import CtxOpt, TargetOpt, UsersOpt, overrides

DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Show the diff of what would change; touch nothing.")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Catalog variant to serve instead of the plan's choice.")]
HealthTimeoutOpt = Annotated[float, typer.Option("--health-timeout", help="Seconds to wait for the service to become healthy.")]


def register(app: typer.Typer) -> None:
    app.command("install")(install)
    app.command("uninstall")(uninstall)
    app.command("upgrade")(upgrade)
    app.command("rollback")(rollback)


def _render_install(console: Any, r: Any) -> None:
    verb = "Would change" if r.dry_run else "Changed"
    if r.dry_run:
        for c in r.changes:
            if c.changed:
                console.print(f"[bold]{c.action}[/bold] {c.path} ({c.mode})")
                if c.diff:
                    console.print(c.diff.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
    console.print(f"aibox [bold]{r.profile}[/bold] on [bold]{r.model_variant}[/bold] under {r.root}: "
                  f"{verb.lower()} {r.changed} file(s)" if r.changed else
                  f"aibox [bold]{r.profile}[/bold] on [bold]{r.model_variant}[/bold] under {r.root}: 0 changes")
    if not r.dry_run:
        console.print(f"  generation   {r.generation}   service ({r.manager}): {r.service_action}")
        console.print(f"  endpoint     {r.endpoint}  (OpenAI-compatible)")
        console.print(f"  API key      {r.api_key_file or 'none (loopback only)'}")
        if r.admin_key:  # made by this run: the only time it is shown
            console.print(f"  admin key    {r.admin_key}  (shown once; kept for this box's tools in "
                          f"{r.api_key_file}; `aiboxctl keys add NAME` for colleagues)", markup=False)
        if r.lan_url:
            console.print(f"  colleagues   {r.lan_url}", markup=False)
        if r.ca_file:
            console.print(f"  CA file      {r.ca_file}  (give it to clients)", markup=False)
        if r.ca_fingerprint:
            label = "CA SHA-256" if r.ca_file else "cert SHA-256"
            console.print(f"  {label:<12} {r.ca_fingerprint}", markup=False)
        if r.audit_log:
            console.print(f"  audit log    {r.audit_log}")
        if r.smoke.get("answer"):
            answer = " ".join(r.smoke["answer"].split())[:80]
            console.print(f"  smoke test   ok: {answer!r}", markup=False)
        fallback = r.smoke.get("fallback_note")
        if fallback:  # not dimmed with the other notes: the box runs other settings than planned
            console.print(f"  fallback     {fallback}", markup=False)
            served = r.smoke.get("served") or {}
            pr, plan = served.get("predicted") or {}, r.predicted or {}
            if pr.get("decode_tok_s"):
                console.print(f"  predicted    decode {pr['decode_tok_s']:.1f} tok/s, prefill {pr.get('prefill_tok_s') or 0:.0f} "
                              f"tok/s for what runs (plan: {plan.get('decode_tok_s') or 0:.1f}, "
                              f"{plan.get('prefill_tok_s') or 0:.0f}); {served.get('basis', '')}", markup=False)
            elif served.get("error"):
                console.print(f"  predicted    {served['error']}", markup=False)
        console.print("  next:        " + "   ".join(r.next_commands), markup=False, soft_wrap=True)
    for note in r.notes:
        if note != r.smoke.get("fallback_note"):
            console.print(f"  [dim]{note}[/dim]")


def install(
    profile: Annotated[Optional[str], typer.Option("--profile", "-p", help="Use-case profile (demo, gov-office, finance, …) or a YAML file.")] = None,
    model: ModelOpt = None,
    root: RootOpt = None,
    port: Annotated[Optional[int], port_option("--port", help="Listen port, 1..65535 (default: the profile's).")] = None,
    bind: Annotated[Optional[str], typer.Option("--bind", help="Listen address (default: the profile's; beyond loopback needs an API key).")] = None,
    users: UsersOpt = None,
    target_tok_s: TargetOpt = None,
    ctx: CtxOpt = None,
    dry_run: DryRunOpt = False,
    replan: Annotated[bool, typer.Option("--replan", help="Plan again even when the inputs match the installed generation.")] = False,
    health_timeout: HealthTimeoutOpt = 300.0,
    tls_cert: Annotated[Optional[Path], typer.Option("--tls-cert", help="The organisation's server certificate for the front door (PEM, chain after); default: a local CA's.")] = None,
    tls_key: Annotated[Optional[Path], typer.Option("--tls-key", help="Its private key (PEM, unencrypted); checked to be the certificate's.")] = None,
    bundle: Annotated[Optional[Path], typer.Option("--bundle", help="Install offline from an `aiboxctl pack` bundle: every member verified first, no network used.")] = None,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> int:
    """Install the appliance: probe, plan, pull, fit, render, write, start, verify (one transaction).
    --users/--target-tok-s/--ctx override the profile and are kept for `upgrade`."""
    sizing = overrides(users, target_tok_s, ctx)
    if bundle is not None:  # offline, from `aiboxctl pack` (the bundle's own module)
        from aiboxctl.cli.pack import install_bundle

        if tls_cert or tls_key:
            from aiboxctl.errors import UsageError

            raise UsageError("--bundle does not take --tls-cert/--tls-key yet",
                             hint="install the bundle, then: aiboxctl install --profile P --tls-cert C --tls-key K")
        if sizing:
            from aiboxctl.errors import UsageError

            raise UsageError("--bundle installs the plan the bundle was packed with; drop --users/--target-tok-s/--ctx",
                             hint="aiboxctl pack --users N --target-tok-s S --ctx C packs a bundle planned with them")

        return install_bundle(bundle, profile=profile, model=model, root=root, port=port, bind=bind,
                              dry_run=dry_run, health_timeout=health_timeout, yes=yes, render=_render_install)
    if profile is None:
        from aiboxctl.errors import UsageError

        raise UsageError("Missing option '--profile' / '-p' (or --bundle).", hint="aiboxctl install --help")
    from aiboxctl.deploy.install import install as run_install

    result = run_install(profile, model=model, root=root, port=port, bind=bind, dry_run=dry_run, replan=replan,
                         health_timeout=health_timeout, progress=output.note,
                         confirm=lambda q: output.confirm(q, yes=yes), sizing=sizing, tls_cert=tls_cert,
                         tls_key=tls_key)
    return output.emit(result, _render_install)


def uninstall(
    root: RootOpt = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the model file and the logs (audit log included).")] = False,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> int:
    """Stop the service and remove exactly what the install manifest lists (models kept unless --purge)."""
    from aiboxctl.deploy.lifecycle import uninstall as run_uninstall
    from aiboxctl.deploy.manifest import require_manifest
    from aiboxctl.deploy.spec import install_layout
    from aiboxctl.deploy.transaction import journal_path

    layout = install_layout(root)
    if not journal_path(layout).exists():  # an interrupted install is there to be removed
        require_manifest(layout)
    output.confirm(f"Uninstall aibox from {layout.root}{' and purge its model and logs' if purge else ''}?", yes=yes)
    result = run_uninstall(root, purge=purge)

    def human(console: Any, r: Any) -> None:
        dirs = len(r.removed_dirs)
        console.print(f"Removed {len(r.removed_files)} file(s), {dirs} director{'y' if dirs == 1 else 'ies'}"
                      f"{', users ' + ', '.join(r.removed_users) if r.removed_users else ''} under {r.root}.")
        if r.kept:
            console.print(f"  kept (use --purge to delete): {', '.join(r.kept)}", markup=False)
        if r.purged_models:
            console.print(f"  purged model: {', '.join(r.purged_models)}", markup=False)

    return output.emit(result, human)


def upgrade(
    root: RootOpt = None,
    model: ModelOpt = None,
    dry_run: DryRunOpt = False,
    health_timeout: HealthTimeoutOpt = 300.0,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> int:
    """Re-plan and re-render the installed profile (new aiboxctl or --model); the previous generation is kept for rollback."""
    from aiboxctl.deploy.lifecycle import upgrade as run_upgrade

    result = run_upgrade(root, model=model, dry_run=dry_run, health_timeout=health_timeout, progress=output.note,
                         confirm=lambda q: output.confirm(q, yes=yes))
    return output.emit(result, _render_install)


def rollback(
    root: RootOpt = None,
    to: Annotated[Optional[int], typer.Option("--to", help="Generation to restore (default: the previous one).")] = None,
    dry_run: DryRunOpt = False,
    health_timeout: HealthTimeoutOpt = 300.0,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> int:
    """Restore a kept generation's files byte for byte, restart and verify the service."""
    from aiboxctl.deploy.lifecycle import rollback as run_rollback

    result = run_rollback(root, to=to, dry_run=dry_run, health_timeout=health_timeout, progress=output.note,
                          confirm=lambda q: output.confirm(q, yes=yes))
    return output.emit(result, _render_install)
