"""Job files: the smallest one as written, --set overrides, the schema from the same fields, and bad files as one
line naming the field (exit 2, nothing started)."""

import json
from dataclasses import replace
import textwrap
from pathlib import Path

import pytest

from orchestrator.cli.main import main
from orchestrator.errors import ConfigError
from orchestrator.job.spec import JobSpec, job_schema, load_job

SMALLEST = """\
name: hello
hosts: node[1-2]
nproc_per_node: 2
python: /opt/venv/bin/python
workdir: .
run: train.py --steps 3
"""


def up(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["up", *args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture
def job_dir(tmp_path):
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "job.yaml").write_text(SMALLEST)
    return tmp_path


def test_smallest_job_file_plans_as_written(job_dir, capsys):
    code, out, _ = up(capsys, str(job_dir / "job.yaml"), "--dry-run", "--json", "--run-dir", str(job_dir / "runs"))
    assert code == 0
    doc = json.loads(out)
    plan = doc["plan"]
    assert [n["host"] for n in plan["nodes"]] == ["node1", "node2"] and plan["world_size"] == 4
    assert plan["program"] == ["train.py", "--steps", "3"]
    assert all(n["python"] == "/opt/venv/bin/python" for n in plan["nodes"])
    assert doc["sync"]["files"] == 2 and plan["nodes"][0]["workdir"].endswith(doc["sync"]["digest"])
    assert not (job_dir / "runs").exists()  # dry run: nothing written


def test_set_overrides_dotted_fields_and_module_runs(job_dir):
    job = load_job(job_dir / "job.yaml", sets=["nproc_per_node=4", "run=-m pkg.train --lr 3e-4",
                                               "supervise.max_restarts=5", "env.NCCL_DEBUG=INFO"])
    spec = job.spec
    assert spec.nproc_per_node == 4 and spec.module and spec.program == ("pkg.train", "--lr", "3e-4")
    assert spec.supervise.max_restarts == 5 and spec.supervise.hang_timeout == 60.0
    assert (spec.supervise.straggler_threshold, spec.supervise.straggler_action) == (1.10, "replace")
    assert spec.env == {"NCCL_DEBUG": "INFO"}


def test_run_as_a_list_is_taken_word_for_word(job_dir):
    spec = load_job(job_dir / "job.yaml", sets=["run=[train.py, 'a b', '$HOME']"]).spec
    assert spec.program == ("train.py", "a b", "$HOME")


def test_schema_lists_every_field_with_help():
    schema = job_schema()
    assert set(schema["properties"]) == set(JobSpec.__dataclass_fields__)
    assert schema["required"] == ["name", "run"] and schema["additionalProperties"] is False
    assert all(p.get("description") for p in schema["properties"].values())
    assert schema["properties"]["launcher"]["enum"] == ["torchrun", "deepspeed"]
    assert "max_restarts" in schema["properties"]["supervise"]["anyOf"][0]["properties"]


def test_schema_option_prints_it(capsys):
    code, out, _ = up(capsys, "--schema")
    assert code == 0 and json.loads(out)["title"] == "orchestrator job file"


BAD = [
    ("unknown field", "nprocs: 2\n", "nprocs", "did you mean 'nproc_per_node'"),
    ("unknown nested field", "supervise: {max_restart: 2}\n", "supervise.max_restart", "did you mean 'max_restarts'"),
    ("wrong type", "nproc_per_node: two\n", "nproc_per_node", "use an integer"),
    ("bool is no int", "nproc_per_node: true\n", "nproc_per_node", "use an integer"),
    ("wrong launcher", "launcher: mpirun\n", "launcher", "torchrun, deepspeed"),
    ("env not a mapping", "env: [A=1]\n", "env", "mapping"),
    ("empty run", "run: ''\n", "run", "give the script"),
    ("unbalanced quote", "run: \"train.py 'x\"\n", "run", "close the quote"),
    ("unknown host in include", "include: node7\n", "include", "node7"),
    ("hosts and slurm", "slurm: {nodes: 2}\n", "slurm", "not both"),
    ("hosts and hostfile", "hostfile: hosts.txt\n", "hostfile", "not both"),
    ("bad name", "name: 'a b'\n", "name", "A-Z a-z 0-9"),
    ("missing workdir", "workdir: nope\n", "workdir", "give a directory"),
    ("reserved env", "env: {RANK: '1'}\n", "env", "set per rank"),
    ("straggler threshold", "supervise: {straggler_threshold: 0.9}\n", "supervise.straggler_threshold", "above 1"),
    ("straggler action", "supervise: {straggler_action: kill}\n", "supervise.straggler_action", "replace, name"),
    ("mounts without container", "container_mounts: [/data:/data]\n", "container_mounts", "set container"),
    ("bad container mount", "container: img\ncontainer_mounts: [data:/data]\n", "container_mounts", "absolute"),
    ("supervised container", "container: img\nsupervise: {}\n", "container", "drop one"),
    ("slurm time", "hosts: null\nslurm: {nodes: 2, time: soon}\n", "slurm.time", "D-HH:MM:SS"),
]


@pytest.mark.parametrize("case, extra, field, fix", BAD, ids=[b[0] for b in BAD])
def test_bad_job_file_is_one_line_exit_2(job_dir, capsys, case, extra, field, fix):
    (job_dir / "job.yaml").write_text(SMALLEST + extra)
    code, out, err = up(capsys, str(job_dir / "job.yaml"), "--run-dir", str(job_dir / "runs"))
    assert code == 2 and out == ""
    assert err.startswith(f"orchestrator: config error: job.yaml:{field}=") and fix in err, err
    assert err.count("\n") == 1
    assert not (job_dir / "runs").exists()


def test_missing_run(job_dir, capsys):
    (job_dir / "job.yaml").write_text(SMALLEST.replace("run: train.py --steps 3\n", ""))
    code, _, err = up(capsys, str(job_dir / "job.yaml"))
    assert code == 2 and "job.yaml:run=None: missing" in err


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_job(tmp_path / "none.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_job(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text(textwrap.dedent("name: [\n"))
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_job(tmp_path / "bad.yaml")


def test_bad_set_names_the_option(job_dir):
    with pytest.raises(ConfigError, match="--set"):
        load_job(job_dir / "job.yaml", sets=["nproc_per_node"])
    with pytest.raises(ConfigError, match="name is not a section"):
        load_job(job_dir / "job.yaml", sets=["name.x=1"])


def test_examples_plan(capsys, monkeypatch, tmp_path):
    examples = Path(__file__).resolve().parents[2] / "examples"
    code, out, _ = up(capsys, str(examples / "hello.yaml"), "--dry-run", "--json")
    assert code == 0 and json.loads(out)["sync"]["files"] == 1
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[1-2]")
    code, out, _ = up(capsys, str(examples / "engine-slurm.yaml"), "--dry-run", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["supervised"] and doc["plan"]["srun"][0] == "srun"


def test_a_run_dir_the_nodes_do_not_share(job_dir, capsys):
    engine = "run: -m orchestrator.engine --config tiny --run-dir /data/r1"
    (job_dir / "job.yaml").write_text(SMALLEST.replace("run: train.py --steps 3", engine) +
                                      "supervise: {shared_run_dir: false}\n")
    code, out, _ = up(capsys, str(job_dir / "job.yaml"), "--dry-run", "--json", "--run-dir", str(job_dir / "runs"))
    assert code == 0 and json.loads(out)["plan"]["shared_run_dir"] is False
    (job_dir / "job.yaml").write_text(SMALLEST.replace("run: train.py --steps 3", engine + " --checkpoint-every 5") +
                                      "supervise: {shared_run_dir: false}\n")
    code, out, err = up(capsys, str(job_dir / "job.yaml"), "--dry-run")
    assert code == 2 and err.startswith("orchestrator: config error: job.yaml:run='5': the engine's DCP checkpoints")
    assert "--checkpoint-local" in err
    (job_dir / "job.yaml").write_text(SMALLEST.replace("run: train.py --steps 3", engine + " --checkpoint-every 5 "
                                                       "--checkpoint-local") + "supervise: {shared_run_dir: false}\n")
    code, out, _ = up(capsys, str(job_dir / "job.yaml"), "--dry-run", "--json", "--run-dir", str(job_dir / "runs"))
    assert code == 0 and json.loads(out)["plan"]["shared_run_dir"] is False


def test_slurm_job_file_outside_an_allocation_plans_a_batch_job(job_dir, capsys, monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        monkeypatch.delenv(name, raising=False)
    slurm = SMALLEST.replace("hosts: node[1-2]\n", "slurm: {nodes: 2, time: '10:00', partition: gpu}\n")
    (job_dir / "slurm.yaml").write_text(slurm)
    code, out, _ = up(capsys, str(job_dir / "slurm.yaml"), "--dry-run", "--json", "--run-id", "r1",
                      "--run-dir", str(job_dir / "runs"))
    doc = json.loads(out)
    assert code == 0 and doc["plan"] is None and doc["sync"]["files"] == 3
    lines = doc["sbatch"].splitlines()
    assert {"#SBATCH --nodes=2", "#SBATCH --time=10:00", "#SBATCH --partition=gpu", "#SBATCH --job-name=hello",
            f"#SBATCH --output={job_dir}/runs/r1/logs/batch.log"} <= set(lines)
    assert lines[-1] == (f"/opt/venv/bin/python -m orchestrator up {job_dir}/runs/r1/spec.json --inside "
                         f"--run-id r1 --run-dir {job_dir}/runs")
    assert not (job_dir / "runs").exists()
    code, _, err = up(capsys, str(job_dir / "slurm.yaml"), "--dry-run", "--set", "slurm.time=soon")
    assert code == 2 and "slurm.yaml:slurm.time='soon'" in err
    code, _, err = up(capsys, str(job_dir / "slurm.yaml"), "--inside")
    assert code == 2 and "--inside" in err and not (job_dir / "runs").exists()


def test_job_data_reads_back_as_the_same_job_from_anywhere(job_dir, tmp_path_factory):
    job = load_job(job_dir / "job.yaml", sets=["env.A=1", "setup=[make, make install]"])
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "spec.json"
    elsewhere.write_text(json.dumps(job.data()))
    again = load_job(elsewhere)
    assert again.spec == replace(job.spec, workdir=str(job_dir))
    assert again.path(again.spec.workdir) == job.path(job.spec.workdir)
