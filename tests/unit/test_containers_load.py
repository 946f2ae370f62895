"""Image tars and load plans (pure: no daemon, no network)."""

import json
import tarfile

import pytest

from orchestrator.containers.image import _write_archive, read_image_tar
from orchestrator.containers.load import check_sha256, plan_chains
from orchestrator.errors import ConfigError
from orch_cli import ORCH


def test_archive_written_by_us_reads_back_with_the_config_digest_as_id(tmp_path):
    info = _write_archive(tmp_path / "a.tar", "t:1", [b"\0" * 1024])
    again = read_image_tar(info.path)
    assert again == info and info.tags == ("t:1",) and info.image_id.startswith("sha256:")
    with tarfile.open(info.path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    assert manifest[0]["Config"] == info.image_id.split(":")[1] + ".json"


@pytest.mark.parametrize("content", [None, b"not a tar at all", "tar-without-manifest"])
def test_missing_or_non_image_file_is_a_config_error(tmp_path, content):
    path = tmp_path / "x.tar"
    if content == "tar-without-manifest":
        with tarfile.open(path, "w") as tar:
            tar.add(__file__, arcname="hello.py")
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        read_image_tar(path)
    assert err.value.field == "IMAGE"


def test_chains_relay_one_chain_baselines_one_node_each():
    hosts = ["a", "b", "c"]
    assert plan_chains(hosts, "relay") == [["a", "b", "c"]]
    assert plan_chains(hosts, "parallel") == plan_chains(hosts, "sequential") == [["a"], ["b"], ["c"]]
    assert plan_chains([], "relay") == []
    with pytest.raises(ConfigError):
        plan_chains(hosts, "bittorrent")


def test_images_load_exit_2_before_any_host_for_a_bad_file(tmp_path):
    import subprocess

    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    for path in (str(tmp_path / "missing.tar"), str(bad)):
        done = subprocess.run([*ORCH, "images", "load", path, "--hosts",
                               "unreachable-host-[1-4]"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "IMAGE=" in done.stderr, done.stderr


def test_expected_sha256_is_64_hex_digits_with_or_without_the_prefix():
    digest = "ab" * 32
    assert check_sha256(digest) == check_sha256("sha256:" + digest.upper()) == digest
    for bad in ("", "abc", "md5:" + digest, digest + "00"):
        with pytest.raises(ConfigError) as err:
            check_sha256(bad)
        assert err.value.field == "--sha256"
