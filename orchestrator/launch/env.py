"""The env manifest: exactly which variables reach the ranks, where each came from, and how to print it safely.

    manifest = build_env_manifest(head_env=os.environ, env_files=["run.env"], env_args=["NCCL_DEBUG=INFO"])
    manifest.values          # {"NCCL_DEBUG": "INFO", "OMP_NUM_THREADS": "1", ...}  (what the ranks get)
    manifest.redacted()      # the same with secret-looking names shown as "***" (what gets printed)
    manifest.sources["NCCL_DEBUG"]   # "--env"

Three layers, later wins: variables forwarded from the head's environment whose names start with one of
FORWARD_PREFIXES, then `--env-file` lines, then `--env K=V`. Nothing else from the head leaks to the ranks
(no PATH, HOME, SSH_* ...): the remote login environment plus this manifest is all a rank sees.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.contracts import RUN_TOKEN
from orchestrator.errors import ConfigError

# Forwarded from the head by default: communication/runtime tuning that users set on the head and expect on
# every rank (NCCL_DEBUG, TORCH_NCCL_*, CUDA_LAUNCH_BLOCKING, PYTHONUNBUFFERED, OMP_NUM_THREADS, GLOO_SOCKET_IFNAME).
FORWARD_PREFIXES = ("NCCL_", "TORCH_", "CUDA_", "PYTHON", "OMP_", "GLOO_")
# Head-local values that would be wrong on another machine: which GPUs a node uses is that node's business.
NOT_FORWARDED = frozenset({"CUDA_VISIBLE_DEVICES", "PYTHONHOME", "PYTHONEXECUTABLE"})
# Set per rank by the launcher itself; a user value would be silently overridden, so refuse it.
RESERVED = frozenset({
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
    RUN_TOKEN, "TORCHELASTIC_ERROR_FILE", "TORCHELASTIC_RUN_ID",
})
# A name holds a secret when it contains TOKEN, SECRET, PASSWORD, PASSWD, PASSPHRASE, CREDENTIAL, COOKIE, AUTH
# (AUTH, OAUTH, AUTHORIZATION; also AUTHOR: showing a harmless value as *** is the cheaper mistake), PRIVATE or
# APIKEY anywhere, or has KEY, KEYS, PASS, PWD or SESSION as a word between `_`, `-`, `.` or the ends
# (API_KEY, --ssh-key, DB_PASS, not MONKEY, KEYBOARD or PASSTHROUGH). Case does not matter.
SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|COOKIE|AUTH|PRIVATE|APIKEY"
    r"|(?:^|[_.-])(?:KEYS?|PASS|PWD|SESSION)(?:$|[_.-])",
    re.IGNORECASE,
)
REDACTED = "***"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def is_secret(name: str) -> bool:
    """True when a variable or option name looks like it holds a secret (the rule is at SECRET_NAME)."""
    return bool(SECRET_NAME.search(name))


def redact_value(name: str, value: str) -> str:
    return REDACTED if is_secret(name) else value


@dataclass(frozen=True)
class EnvManifest:
    """The variables every rank receives, with the source of each (for --dry-run/--json and the run dir)."""

    values: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def redacted(self) -> dict[str, str]:
        return {k: redact_value(k, v) for k, v in self.values.items()}

    def to_json(self) -> dict:
        return {"values": self.redacted(), "sources": dict(self.sources), "forward_prefixes": list(FORWARD_PREFIXES)}


def _check_name(name: str, where: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(where, name, "variable names are letters, digits and _, not starting with a digit")
    if name in RESERVED:
        raise ConfigError(where, name, f"{name} is set per rank by the launcher; remove it")


def parse_env_arg(text: str) -> tuple[str, str]:
    """'K=V' -> (K, V); V is taken literally (may hold '=', spaces, quotes, newlines)."""
    name, sep, value = text.partition("=")
    if not sep:
        raise ConfigError("--env", text, "use NAME=VALUE")
    _check_name(name, "--env")
    return name, value


def parse_env_file(path: str | Path) -> list[tuple[str, str, int]]:
    """Read NAME=VALUE lines (dotenv-like): '#' comments, blank lines, optional 'export ', one pair of
    surrounding quotes stripped, no other unquoting or expansion. Returns (name, value, line number)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError("--env-file", str(path), f"cannot read it: {exc.strerror}") from None
    pairs = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        where = f"--env-file {path}:{lineno}"
        if not sep:
            raise ConfigError(where, raw, "expected NAME=VALUE")
        _check_name(name.strip(), where)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        pairs.append((name.strip(), value, lineno))
    return pairs


def forwarded_from_head(head_env: Mapping[str, str], prefixes: Iterable[str] = FORWARD_PREFIXES) -> dict[str, str]:
    prefixes = tuple(prefixes)
    return {
        k: v for k, v in sorted(head_env.items())
        if k.startswith(prefixes) and k not in NOT_FORWARDED and k not in RESERVED and _NAME.match(k)
    }


def build_env_manifest(
    *,
    head_env: Mapping[str, str],
    env_files: Iterable[str | Path] = (),
    env_args: Iterable[str] = (),
    forward: bool = True,
) -> EnvManifest:
    """Layer head-forwarded variables < env files (in order) < --env arguments (in order)."""
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    if forward:
        for name, value in forwarded_from_head(head_env).items():
            values[name], sources[name] = value, "head"
    for path in env_files:
        for name, value, lineno in parse_env_file(path):
            values[name], sources[name] = value, f"{path}:{lineno}"
    for text in env_args:
        name, value = parse_env_arg(text)
        values[name], sources[name] = value, "--env"
    return EnvManifest(values=values, sources=sources)


def redact_argv(argv: Iterable[str]) -> list[str]:
    """Hide values of secret-looking options/assignments in a command line meant for printing:
    '--hf-token=abc' -> '--hf-token=***', '--api-key abc' -> '--api-key ***', 'DB_PASSWORD=x' -> 'DB_PASSWORD=***'."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        name, sep, _ = arg.partition("=")
        if sep and is_secret(name):
            out.append(f"{name}={REDACTED}")
        elif arg.startswith("-") and not sep and is_secret(arg):
            out.append(arg)
            hide_next = True
        else:
            out.append(arg)
    return out
