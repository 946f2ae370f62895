"""Env manifest: layering, sources, validation, redaction (pure)."""

import pytest

from orchestrator.errors import ConfigError
from orchestrator.launch.env import (
    REDACTED, build_env_manifest, forwarded_from_head, is_secret, parse_env_file, redact_argv,
)

HEAD = {
    "NCCL_DEBUG": "INFO", "TORCH_NCCL_BLOCKING_WAIT": "1", "CUDA_LAUNCH_BLOCKING": "1", "PYTHONUNBUFFERED": "1",
    "OMP_NUM_THREADS": "4", "GLOO_SOCKET_IFNAME": "eth0", "PATH": "/usr/bin", "HOME": "/root",
    "SSH_AUTH_SOCK": "/tmp/agent", "CUDA_VISIBLE_DEVICES": "0", "HF_TOKEN": "hf_x",
}


def test_forwards_only_documented_prefixes():
    fwd = forwarded_from_head(HEAD)
    assert set(fwd) == {"NCCL_DEBUG", "TORCH_NCCL_BLOCKING_WAIT", "CUDA_LAUNCH_BLOCKING", "PYTHONUNBUFFERED",
                        "OMP_NUM_THREADS", "GLOO_SOCKET_IFNAME"}


def test_layers_later_wins_and_sources(tmp_path):
    f = tmp_path / "run.env"
    f.write_text("# comment\n\nexport NCCL_DEBUG=WARN\nA='quoted value'\nB=\"x=y\"\n")
    m = build_env_manifest(head_env=HEAD, env_files=[f], env_args=["A=from-arg", "C=a b\nc"])
    assert m.values["NCCL_DEBUG"] == "WARN" and m.sources["NCCL_DEBUG"] == f"{f}:3"
    assert m.values["A"] == "from-arg" and m.sources["A"] == "--env"
    assert m.values["B"] == "x=y"
    assert m.values["C"] == "a b\nc"
    assert m.sources["OMP_NUM_THREADS"] == "head"
    assert "PATH" not in m.values and "HF_TOKEN" not in m.values


def test_no_forward():
    assert build_env_manifest(head_env=HEAD, forward=False, env_args=["X=1"]).values == {"X": "1"}


def test_hostile_values_are_kept_literally():
    hostile = "$(touch /tmp/x); `id` 'q\" \n;rm -rf ~"
    m = build_env_manifest(head_env={}, env_args=[f"EVIL={hostile}"])
    assert m.values["EVIL"] == hostile


@pytest.mark.parametrize("arg", ["NOEQUALS", "1BAD=x", "A-B=x", "=x", "RANK=3", "MASTER_ADDR=a"])
def test_bad_env_args(arg):
    with pytest.raises(ConfigError) as e:
        build_env_manifest(head_env={}, env_args=[arg])
    assert "--env" in str(e.value)


def test_env_file_bad_line_names_file_and_line(tmp_path):
    f = tmp_path / "bad.env"
    f.write_text("A=1\n\nthis is not an assignment\n")
    with pytest.raises(ConfigError) as e:
        parse_env_file(f)
    assert f"{f}:3" in str(e.value)


def test_env_file_missing(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_env_file(tmp_path / "nope.env")
    assert "--env-file" in str(e.value)


def test_redaction():
    m = build_env_manifest(head_env={}, env_args=["WANDB_API_KEY=k", "HF_TOKEN=t", "DB_PASSWORD=p", "MY_SECRET=s",
                                                  "NCCL_DEBUG=INFO"])
    red = m.redacted()
    assert red["NCCL_DEBUG"] == "INFO"
    assert all(red[k] == REDACTED for k in ("WANDB_API_KEY", "HF_TOKEN", "DB_PASSWORD", "MY_SECRET"))
    assert m.values["HF_TOKEN"] == "t"  # what reaches the ranks is untouched
    assert "t" not in m.to_json()["values"].values()
    assert is_secret("aws_secret_access_key") and not is_secret("NCCL_DEBUG")


def test_redact_argv():
    argv = ["train.py", "--hf-token=abc", "--api-key", "xyz", "--lr", "3", "DB_PASSWORD=p", "plain"]
    assert redact_argv(argv) == ["train.py", f"--hf-token={REDACTED}", "--api-key", REDACTED, "--lr", "3",
                                 f"DB_PASSWORD={REDACTED}", "plain"]


@pytest.mark.parametrize("name", [
    "TORCH_AUTH", "AUTH", "OAUTH_CLIENT", "HTTP_AUTHORIZATION", "API_KEY", "SSH_KEY", "KEYS", "aws_access_key_id",
    "WANDB_APIKEY", "DB_PASS", "DB_PWD", "GITHUB_TOKEN", "MY_COOKIE", "SESSION_ID", "GCP_CREDENTIALS",
    "PRIVATE_DATA", "GPG_PASSPHRASE", "--ssh-key", "--auth", "secrets.yaml",
])
def test_secret_names(name):
    assert is_secret(name)


@pytest.mark.parametrize("name", [
    "NCCL_DEBUG", "MONKEY", "KEYBOARD_LAYOUT", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "PASSTHROUGH", "OMP_NUM_THREADS",
    "CUDA_LAUNCH_BLOCKING", "NCCL_IB_PKEY_INDEX", "--lr",
])
def test_plain_names(name):
    assert not is_secret(name)
