"""Pure planning for a sandbox: names, addresses and the text of every generated file. No side effects.

    plan = plan_sandbox("default", nodes=4, prefix="node", taken_subnets={"10.76.0.0/16"})
    plan.hosts[0].name, plan.hosts[0].ip      # ('node1', '10.80.0.1')
    plan.bridge, plan.subnet                  # ('orchbr-default', '10.80.0.0/16')
    render_etc_hosts(plan)                    # "127.0.0.1 localhost\\n10.80.255.254 sandbox-head\\n10.80.0.1 node1\\n..."
    render_nsswitch(Path("/etc/nsswitch.conf").read_text())   # the head's, with "hosts: files"

Every sandbox gets its own /16 out of 10.80.0.0-10.179.0.0 (so it cannot collide with the lab's 10.77.0.0/24
or with another sandbox), its own bridge `orchbr-<short>`, and namespace files named after it, so two
sandboxes (two pytest processes) live side by side on one machine.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

from orchestrator.errors import ConfigError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
PREFIX_RE = re.compile(r"[a-z][a-z0-9-]{0,23}")
MAX_HOSTS = 1000  # a Linux bridge takes 1024 ports
HOSTS_PER_THIRD_OCTET = 250  # host i lives at 10.B.(i // 250).(i % 250 + 1): no .0/.255 look-alikes
SUBNET_SECOND_OCTETS = range(80, 180)
HEAD_NAME = "sandbox-head"
OVERLAY_DIRS = ("/etc", "/opt", "/usr", "/var")


@dataclass(frozen=True, slots=True)
class HostPlan:
    name: str
    """Hostname inside the host (UTS namespace) and the ssh alias."""
    ip: str
    netns: str
    """Network namespace name (/run/netns/<netns>), unique per sandbox."""
    veth: str
    """Root-namespace end of the host's veth pair (the host sees `eth0`)."""


@dataclass(frozen=True, slots=True)
class SandboxPlan:
    name: str
    short: str
    prefix: str
    bridge: str
    subnet: str
    head_ip: str
    hosts: tuple[HostPlan, ...]


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name or ""):
        raise ConfigError("--name", name, "use 1-32 characters of a-z, 0-9 and '-', starting with a letter or digit")
    return name


def short_id(name: str) -> str:
    """8 characters at most, so `orchbr-<short>` and `ov<short>-<i>` fit the kernel's 15-character ifname."""
    if re.fullmatch(r"[a-z0-9]{1,8}", name):
        return name
    return hashlib.sha1(name.encode()).hexdigest()[:8]


def choose_subnet(taken: set[str]) -> str:
    """The first 10.B.0.0/16 (B in 80..179) that overlaps nothing in `taken` (CIDR strings)."""
    taken_nets = [ipaddress.ip_network(t, strict=False) for t in taken]
    for b in SUBNET_SECOND_OCTETS:
        net = ipaddress.ip_network(f"10.{b}.0.0/16")
        if not any(net.overlaps(t) for t in taken_nets if t.version == 4):
            return str(net)
    raise ConfigError(message="sandbox: no free subnet in 10.80.0.0-10.179.255.255; run `orchestrator sandbox down` on old sandboxes")


def host_ip(subnet: str, index: int) -> str:
    """Address of host number `index` (0-based) inside the /16."""
    base = ipaddress.ip_network(subnet).network_address
    third, fourth = divmod(index, HOSTS_PER_THIRD_OCTET)
    return str(base + third * 256 + fourth + 1)


def plan_sandbox(name: str, *, nodes: int, prefix: str = "node", taken_subnets: set[str] = frozenset()) -> SandboxPlan:
    validate_name(name)
    if not PREFIX_RE.fullmatch(prefix or ""):
        raise ConfigError("--prefix", prefix, "use a-z, 0-9 and '-', starting with a letter (hostnames)")
    if not 1 <= nodes <= MAX_HOSTS:
        raise ConfigError("--nodes", nodes, f"use 1..{MAX_HOSTS} (a Linux bridge holds 1024 ports)")
    short = short_id(name)
    subnet = choose_subnet(set(taken_subnets))
    head_ip = str(ipaddress.ip_network(subnet).broadcast_address - 1)
    hosts = tuple(
        HostPlan(name=f"{prefix}{i + 1}", ip=host_ip(subnet, i), netns=f"orch-{short}-{prefix}{i + 1}", veth=f"ov{short}-{i + 1}")
        for i in range(nodes)
    )
    return SandboxPlan(name=name, short=short, prefix=prefix, bridge=f"orchbr-{short}", subnet=subnet, head_ip=head_ip, hosts=hosts)


def render_etc_hosts(plan: SandboxPlan) -> str:
    lines = ["127.0.0.1 localhost", f"{plan.head_ip} {HEAD_NAME}"]
    lines += [f"{h.ip} {h.name}" for h in plan.hosts]
    return "\n".join(lines) + "\n"


def render_nsswitch(head_text: str) -> str:
    """The hosts' nsswitch.conf: the head's, but names from /etc/hosts only. The hosts have no route out, so DNS
    can only fail "temporarily" (EAI_AGAIN): c10d then warns on every connection that getnameinfo of a peer's
    ::ffff:10.x address failed (/etc/hosts has no v4-mapped entries). With files only, a miss is a plain "not
    found" and getnameinfo answers with the numeric address, as on a cluster whose DNS lacks that PTR record."""
    lines = [line for line in head_text.splitlines() if not re.match(r"\s*hosts\s*:", line)]
    return "\n".join([*lines, "hosts: files"]) + "\n"


def render_sshd_config(*, ip: str, host_key: str, pidfile: str, authorized_keys: str, hostname: str) -> str:
    return f"""\
# generated by orchestrator sandbox; StrictModes no: keys live under /tmp (mode 1777)
ListenAddress {ip}
Port 22
HostKey {host_key}
PidFile {pidfile}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile {authorized_keys}
StrictModes no
UsePAM no
UseDNS no
MaxStartups 512
MaxSessions 512
AcceptEnv LANG LC_* ORCH_*
Subsystem sftp /usr/lib/openssh/sftp-server
SetEnv ORCH_SANDBOX_HOST={hostname}
LogLevel ERROR
"""


def render_ssh_config(plan: SandboxPlan, *, identity: str, known_hosts: str) -> str:
    """An OpenSSH client config for `ssh -F` and `orchestrator run --ssh-config`. Host keys stay checked."""
    octets = plan.subnet.split(".")
    blocks = [f"Host {h.name}\n    HostName {h.ip}\n" for h in plan.hosts]
    common = f"""\
Host {plan.prefix}* {octets[0]}.{octets[1]}.*.*
    User root
    IdentityFile {identity}
    IdentitiesOnly yes
    UserKnownHostsFile {known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    LogLevel ERROR
    ConnectTimeout 5
    # faster than the default hybrid post-quantum KEX (~0.07 s less per connection here)
    KexAlgorithms curve25519-sha256
"""
    return f"# sandbox {plan.name}: generated by orchestrator sandbox\n" + "".join(blocks) + common


def render_known_hosts(entries: list[tuple[str, str, str]]) -> str:
    """entries: (hostname, ip, 'ssh-ed25519 AAAA...') -> known_hosts lines `name,ip keytype key`."""
    return "".join(f"{name},{ip} {pub}\n" for name, ip, pub in entries)
