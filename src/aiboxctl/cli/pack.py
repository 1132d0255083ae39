"""``aiboxctl pack``: one archive for a box with no network (install it with ``install --bundle``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt
from aiboxctl.cli.plan import CtxOpt, TargetOpt, UsersOpt, overrides


def register(app: typer.Typer) -> None:
    app.command("pack")(pack)


def _human(console: Any, r: Any) -> None:
    mib = r.size / (1 << 20)
    kind = "zstd-compressed tar" if r.compress == "zstd" else "plain tar"
    console.print(f"[bold]{r.bundle}[/bold]  {mib:.1f} MiB, {r.members} members ({kind})")
    console.print(f"  bundle id    {r.bundle_id}", markup=False)
    console.print(f"  target       {r.target.describe()}  (profile {r.profile}, hardware {r.hardware})", markup=False)
    console.print(f"  model        {r.model['variant']} {r.model.get('quant') or ''}  {r.model['file']}  "
                  f"sha256 {r.model['sha256'][:16]}…", markup=False)
    ew = r.engine_wheel
    variants = f", {len(ew.get('cpu_variants') or [])} CPU variants" if ew.get("build") == "portable" else ""
    console.print(f"  engine wheel {ew.get('file')} ({ew.get('build')} build{variants})", markup=False)
    console.print(f"  wheels       {r.wheels}", markup=False)
    console.print(f"  on the box:  tar -xf {r.bundle.name} install.sh && sh install.sh {r.bundle.name} --yes"
                  f"   (or: aiboxctl install --bundle {r.bundle.name} --yes)", markup=False)


def pack(
    profile: Annotated[str, typer.Option("--profile", "-p", help="Use-case profile (demo, gov-office, …) or a YAML file.")],
    hardware: Annotated[str, typer.Option("--hardware", help="Hardware profile of the target box (profiles/hardware) or a YAML file.")],
    out: Annotated[Path, typer.Option("--output", "-o", help="The bundle file to write.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Catalog variant instead of the plan's choice.")] = None,
    python: Annotated[Optional[str], typer.Option("--python", help="Target Python version (default: this one), e.g. 3.11.")] = None,
    platform: Annotated[Optional[str], typer.Option("--platform", help="Target wheel platform (default manylinux_2_28_<this arch>).")] = None,
    compress: Annotated[str, typer.Option("--compress", help="none (weights do not compress) or zstd.")] = "none",
    users: UsersOpt = None,
    target_tok_s: TargetOpt = None,
    ctx: CtxOpt = None,
    engine_wheel: Annotated[Optional[Path], typer.Option("--engine-wheel", help="llama-cpp-python wheel to bundle (default: a portable build from the wheel cache, else pip's cache).")] = None,
    json_: JsonOpt = False,
) -> int:
    """Write one air-gapped bundle: verified weights, every wheel, the plan, configs, manifest, install.sh."""
    from aiboxctl.bundle.pack import pack as run_pack

    result = run_pack(profile, hardware, output=out, model=model, python=python, platform_tag=platform,
                      compress=compress, engine_wheel=engine_wheel, progress=output.note,
                      sizing=overrides(users, target_tok_s, ctx))
    for w in result.warnings:
        output.warn(w)
    return output.emit(result, _human)


def install_bundle(bundle: Path, *, profile: Optional[str], model: Optional[str], root: Optional[Path],
                   port: Optional[int], bind: Optional[str], dry_run: bool, health_timeout: float, yes: bool,
                   render: Any) -> int:
    """``aiboxctl install --bundle``: the bundle names profile and model; everything is offline."""
    from aiboxctl.bundle.offline import install_from_bundle
    from aiboxctl.errors import UsageError

    if profile is not None or model is not None:
        raise UsageError("--bundle installs the bundle's own profile and model; drop --profile/--model",
                         hint="aiboxctl pack --profile ... --model ... makes a bundle for another choice")
    if dry_run:
        raise UsageError("--dry-run is not supported with --bundle",
                         hint="check the bundle with: tar -tvf BUNDLE (install --bundle verifies it first anyway)")
    result = install_from_bundle(bundle, root=root, port=port, bind=bind, health_timeout=health_timeout,
                                 progress=output.note, confirm=lambda q: output.confirm(q, yes=yes),
                                 warn=output.warn)

    def human(console: Any, r: Any) -> None:
        console.print(f"bundle {Path(r.bundle).name}  id {r.bundle_id[:16]}…  {r.members_verified} members "
                      f"verified ({r.bytes_verified / (1 << 20):.1f} MiB), made {r.created} for {r.target}",
                      markup=False)
        render(console, r.install)

    return output.emit(result, human)
