"""``aiboxctl status``, ``start``, ``stop``, ``restart``, ``logs``: the installed service."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt, RootOpt
from aiboxctl.errors import ExitCode

TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to wait for the service to become healthy.")]


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("start")(start)
    app.command("stop")(stop)
    app.command("restart")(restart)
    app.command("logs")(logs)


def _gib(n: int | None) -> str:
    return f"{n / 2**30:.2f} GiB" if n else "?"


def status(root: RootOpt = None, json_: JsonOpt = False) -> int:
    """Service state, model, plan summary, health, slots, memory in use, endpoint. Exit 5 when not healthy."""
    from aiboxctl.deploy.lifecycle import status as get_status

    result = get_status(root)

    def human(console: Any, r: Any) -> None:
        mark = "[green]healthy[/green]" if r.healthy else "[red]not healthy[/red]"
        console.print(f"aibox under {r.root}: {mark}  ({r.service['manager']}: {r.service['detail']}, "
                      f"restarts {r.service['restarts']})")
        console.print(f"  model      {r.model_variant}  ({r.model_path}, {r.model_state})", markup=False, soft_wrap=True)
        console.print(f"  profile    {r.profile}   generation {r.generation}")
        p = r.plan
        planned = ", ".join(f"{k} {v}" for k, v in (p.get("planned") or {}).items())
        planned = f" (running a self-test fallback; planned: {planned})" if planned else ""
        console.print(f"  plan       n_ctx {p['n_ctx']}, {p['parallel']} slots, threads {p['threads'] or 'auto'}, "
                      f"KV {p['cache_type_k']}/{p['cache_type_v']}, repack {p['repack']}{planned}", markup=False)
        pr = p.get("predicted") or {}
        if pr.get("decode_tok_s"):
            figs = [f"decode {pr['decode_tok_s']:.1f} tok/s"]
            if pr.get("prefill_tok_s"):
                figs.append(f"prefill {pr['prefill_tok_s']:.0f} tok/s")
            if pr.get("memory_total_bytes"):
                figs.append(f"memory {_gib(pr['memory_total_bytes'])}")
            console.print(f"  predicted  {', '.join(figs)}  (for {p.get('predicted_for', 'the plan')})",
                          markup=False, soft_wrap=True)
        h = r.health
        if "slots_busy" in h or "slots_free" in h:
            console.print(f"  slots      {h.get('slots_busy', '?')} busy, {h.get('slots_free', '?')} free")
        if h.get("fallback"):
            console.print(f"  fallback   {h['fallback']}", markup=False)
        console.print(f"  memory     {_gib(r.memory_rss_bytes)} resident")
        console.print(f"  endpoint   {r.endpoint}   key: {r.api_key_file or 'none'}")
        console.print(f"  logs       {r.log_file}")
        for i in r.instances:  # several engines behind the front door
            slots = f", {i['slots_busy']} busy / {i['slots_free']} free slots" if i.get("slots_busy") is not None else ""
            console.print(f"  instance   {i['name']} ({i['role']}): {i['model']} on {'+'.join(i['devices']) or 'CPU'}, "
                          f"port {i['port']}, {'healthy' if i['healthy'] else 'not healthy'}{slots}", markup=False)
        for warning in r.warnings:
            console.print(f"  note       {warning}", markup=False)

    code = ExitCode.OK if result.healthy else ExitCode.SERVICE_DOWN
    rc = output.emit(result, human, exit_code=code)
    if not result.healthy and not output.STATE.json:
        hint = "" if root is None else f" --root {result.root}"
        for problem in result.problems:
            output.warn(f"not healthy: {problem}")
        if not result.problems:
            output.warn(f"the service is not healthy: see `aiboxctl logs{hint}`, then `aiboxctl start{hint}`")
    return rc


def _render_action(console: Any, r: Any) -> None:
    state = "running" if r.running else "stopped"
    extra = " and healthy" if r.healthy else ""
    console.print(f"aibox ({r.manager}) under {r.root}: {state}{extra}"
                  f"{' (was already running)' if r.action == 'start' and r.was_running else ''}")


def start(root: RootOpt = None, no_wait: Annotated[bool, typer.Option("--no-wait", help="Do not wait for health.")] = False,
          timeout: TimeoutOpt = 300.0, json_: JsonOpt = False) -> int:
    """Start the installed service (systemd, or the built-in supervisor) and wait until healthy."""
    from aiboxctl.deploy.lifecycle import start as do_start

    return output.emit(do_start(root, wait=not no_wait, timeout=timeout), _render_action)


def stop(root: RootOpt = None, json_: JsonOpt = False) -> int:
    """Stop the installed service."""
    from aiboxctl.deploy.lifecycle import stop as do_stop

    return output.emit(do_stop(root), _render_action)


InstanceArg = Annotated[Optional[str], typer.Argument(
    help="One engine instance of a multi-instance install (chat-0, embedding, …) or gateway; default: all.")]


def restart(instance: InstanceArg = None, root: RootOpt = None,
            no_wait: Annotated[bool, typer.Option("--no-wait", help="Do not wait for health.")] = False,
            timeout: TimeoutOpt = 300.0, json_: JsonOpt = False) -> int:
    """Restart the installed service (or one instance of it) and wait until healthy."""
    from aiboxctl.deploy.lifecycle import restart as do_restart

    return output.emit(do_restart(root, wait=not no_wait, timeout=timeout, instance=instance), _render_action)


def logs(instance: InstanceArg = None, root: RootOpt = None,
         lines: Annotated[int, typer.Option("-n", "--lines", help="How many lines from the end.")] = 50,
         follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new lines (Ctrl-C stops).")] = False,
         json_: JsonOpt = False) -> int:
    """The service's log (engine and supervisor output)."""
    import sys

    from aiboxctl.deploy import lifecycle

    path = lifecycle.log_path(root, instance)
    tail = lifecycle.tail_lines(path, lines)
    if output.STATE.json:
        return output.emit({"log_file": str(path), "lines": tail})
    for line in tail:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()
    if follow:
        try:
            for line in lifecycle.follow(path):
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
    return 0
