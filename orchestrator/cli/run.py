"""`orchestrator run`: one command on many hosts in parallel, like pdsh/clush, every host accounted for.

    $ orchestrator run --hosts 'node[1-16]' --ssh-config sandbox.ssh -- uname -r
    node3: 6.1.0-18-amd64
    ...
    $ orchestrator run -w 'node[1-16]' -b -- uname -r        # folded like dshbak: identical output once
    $ orchestrator run -w 'node[1-64]' --fanout 128 --timeout 30 --table -- nvidia-smi -L
    $ orchestrator run -w 'node[1-4]' --dry-run --json -- hostname  # the plan, connect to nothing

Exit code: the highest remote exit code; 255 when a host was unreachable or timed out (like pdsh -S); 130
when SIGINT, SIGTERM or SIGHUP stopped the run (every host's command is killed, the summary still printed; a host
that does not confirm within 5 s, a hung sshd, is listed as `stopped, not verified` and not waited for).
Failures are summarised on stderr, grouped: `node[03,07]: exit 255: connection refused`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import click

from orchestrator.cli.options import HostSelection, host_options, resolve_from_cli
from orchestrator.cli.ssh_options import ssh_options


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def _run_until_signal(hosts, command, **kwargs):
    """run_on_async, stopped (every session closed: the agents kill the commands) by SIGINT/SIGTERM/SIGHUP:
    (result, the signal or None)."""
    from orchestrator.remote.fanout import STOP_ANSWER_S, run_on_async

    loop, stop, got = asyncio.get_running_loop(), asyncio.Event(), []

    def on_signal(signum: int) -> None:
        got.append(signum)
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        result = await run_on_async(hosts, command, stop=stop, stop_wait=STOP_ANSWER_S, **kwargs)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    return result, (got[0] if got else None)


def _emit(stream, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()  # line by line: the output of long-running commands must show while they run


@click.command("run", context_settings={"allow_interspersed_args": False})
@host_options
@ssh_options
@click.option("-f", "--fanout", type=click.IntRange(min=1), default=64, show_default=True,
              help="Hosts running at the same time (like pdsh -f).")
@click.option("-t", "--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Per host: stop the command after this long (its processes are killed): exit 255.")
@click.option("-b", "--fold", is_flag=True, help="Gather stdout and show identical output once per host set (dshbak -c).")
@click.option("--env", "env_args", multiple=True, metavar="NAME=VALUE",
              help="Set a variable for the command (repeatable); travels as data, not through a shell.")
@click.option("--agent", type=click.Choice(["auto", "sh", "python"]), default="auto", show_default=True,
              help="Node-side agent that owns the command's processes: sh (POSIX sh, no Python needed on the hosts, "
                   "starts ~3x faster) or python (env values travel on stdin, off the process list). "
                   "auto: python with --env or --python, else sh.")
@click.option("--python", default=None, help="Interpreter on the hosts for the python agent [default: python3].")
@click.option("--run-id", default=None, help="Token for the command's processes (default: a fresh one).")
@click.option("--table", is_flag=True, help="Print a per-host table (exit code, seconds, error) on stderr.")
@click.option("--dry-run", is_flag=True, help="Print what would run on each host; connect to nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout: the plan (--dry-run) or every host's result.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_command(host_selection: HostSelection, ssh, fanout: int, timeout: float | None, fold: bool, env_args, agent: str,
                python: str | None, run_id: str | None, table: bool, dry_run: bool, as_json: bool,
                command: tuple[str, ...]) -> int:
    """Run COMMAND (everything after `--`) on every host; `localhost` alone runs without SSH."""
    from orchestrator.launch.env import parse_env_arg, redact_value
    from orchestrator.errors import EXIT_INTERRUPTED
    from orchestrator.contracts import new_run_id
    from orchestrator.remote import plan_commands
    from orchestrator.remote.fanout import STOPPED_UNVERIFIED
    from orchestrator.remote.output import OutputFolder, Prefixer, results_table, summary

    hosts = resolve_from_cli(host_selection).names
    env = dict(parse_env_arg(e) for e in env_args)
    run_id = run_id or new_run_id()
    if agent == "auto":
        agent = "python" if env or python else "sh"
    python = python or "python3"
    plan = plan_commands(hosts, list(command), env=env, python=python, agent=agent)
    if dry_run:
        doc = {"run_id": run_id, "hosts": [{"host": c.host, "argv": list(c.argv), "agent": c.agent, "python": c.python,
                                            "env": {k: redact_value(k, v) for k, v in c.env.items()}} for c in plan]}
        if as_json:
            _emit(sys.stdout, json.dumps(doc, indent=2))
        else:
            import shlex

            for c in doc["hosts"]:
                env_text = " ".join(f"{k}={shlex.quote(v)}" for k, v in c["env"].items())
                _emit(sys.stdout, f"would run on {c['host']}: {(env_text + ' ') if env_text else ''}{shlex.join(c['argv'])}")
        return 0

    folder, prefix = OutputFolder(hosts), Prefixer()

    def on_line(host: str, stream: str, line: str) -> None:
        if as_json:
            return  # the tails are in the document
        if fold and stream == "stdout":
            folder.add(host, stream, line)
        else:
            out = sys.stdout if stream == "stdout" else sys.stderr
            out.write(prefix(host, stream, line))  # a long line's pieces: prefixed once
            out.flush()

    result, signum = asyncio.run(_run_until_signal(hosts, list(command), ssh=ssh, fanout=fanout, env=env, python=python,
                                                   agent=agent, run_id=run_id, timeout=timeout, on_line=on_line))
    if as_json:
        _emit(sys.stdout, json.dumps(result.to_json(), indent=2))
    elif fold:
        folder.write(sys.stdout)
    for line in summary(result):
        _emit(sys.stderr, line)
    if table:
        from rich.console import Console

        Console(stderr=True).print(results_table(result))
    if signum is not None:
        unverified = [r.host for r in result.values() if (r.error or "").startswith(STOPPED_UNVERIFIED)]
        _emit(sys.stderr, f"interrupted by {signal.Signals(signum).name}: " + (
            f"{len(unverified)} host{'s' * (len(unverified) > 1)} did not confirm the stop (above)" if unverified
            else "every host's command was stopped"))
        return EXIT_INTERRUPTED
    return result.exit_code


commands = [run_command]
