"""The batch job's copy of the workdir (job/batch.py): taken at submit, so later edits do not reach a queued job."""

import os

from orchestrator.job.batch import snapshot_tree
from orchestrator.job.sync import read_tree


def test_the_copy_taken_at_submit_has_the_trees_digest_and_ignores_later_edits(tmp_path):
    work = tmp_path / "work"
    (work / "pkg").mkdir(parents=True)
    (work / "train.py").write_text("print('v1')\n")
    (work / "pkg" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(work / "pkg" / "run.sh", 0o755)
    os.symlink("train.py", work / "main.py")
    tree = read_tree(work)

    copy = snapshot_tree(tree, tmp_path / "runs" / ".code")
    (work / "train.py").write_text("print('v2')\n")  # edited after submit
    assert copy.name == tree.digest and read_tree(copy).digest == tree.digest
    assert (copy / "train.py").read_text() == "print('v1')\n"
    assert os.access(copy / "pkg" / "run.sh", os.X_OK) and os.readlink(copy / "main.py") == "train.py"

    mtime = (copy / "train.py").stat().st_mtime_ns
    assert snapshot_tree(tree, tmp_path / "runs" / ".code") == copy  # the same tree again: nothing copied
    assert (copy / "train.py").stat().st_mtime_ns == mtime
    assert [p.name for p in (tmp_path / "runs" / ".code").iterdir()] == [tree.digest]  # no partial copy left
