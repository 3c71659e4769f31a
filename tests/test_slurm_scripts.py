"""slurm/ and docker/ scripts without a scheduler: lint, and the sbatch/srun lines they build.

``sbatch`` and ``srun`` are replaced by stubs that record their arguments, so these run in the
default suite; tests/test_slurm.py runs the same scripts on a real Slurm (`make test-slurm`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _train_helpers import make_cache, tiny_raw_config, write_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPTS = [
    REPO / "slurm" / "submit.sh",
    REPO / "slurm" / "stage.sbatch",
    REPO / "slurm" / "evaluate.sbatch",
    REPO / "tests" / "slurm" / "single-node.sh",
    REPO / "docker" / "build-check.sh",
]


def test_shell_scripts_pass_shellcheck():
    done = subprocess.run([str(BIN / "shellcheck"), *map(str, SCRIPTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_dockerfile_passes_hadolint():
    done = subprocess.run([str(BIN / "hadolint"), str(REPO / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


_STUB = """#!/bin/bash
# records one line of JSON per call: the program's arguments and a few environment variables
python3 -c 'import json, os, sys; print(json.dumps({"prog": os.path.basename(sys.argv[1]), "args": sys.argv[2:],
    "ICH3D": os.environ.get("ICH3D")}))' "$0" "$@" >> "$STUB_LOG"
if [ "$(basename "$0")" = sbatch ]; then n=$(wc -l < "$STUB_LOG"); echo "$((100 + n));cluster"; fi
"""


@pytest.fixture()
def stubs(tmp_path):
    folder = tmp_path / "stubs"
    folder.mkdir()
    for name in ("sbatch", "srun"):
        (folder / name).write_text(_STUB)
        (folder / name).chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("proj")
    cache = make_cache(root, patients=8)
    write_config(root / "tiny.yaml", tiny_raw_config(cache, root))
    return root


def _run(cmd, project, stubs, **env):
    log = project / f"calls-{os.getpid()}-{len(list(project.glob('calls-*')))}.jsonl"
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH", "GPUS", "NODES", "TASKS"))}
    full.update(PATH=f"{stubs}:{BIN}:{os.environ['PATH']}", STUB_LOG=str(log), **env)
    done = subprocess.run(cmd, cwd=project, env=full, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return done.stdout, calls


def _opts(call):
    """The sbatch options before the script path, as a list."""
    args = call["args"]
    script = next(i for i, a in enumerate(args) if a.endswith((".sbatch",)))
    return args[:script], args[script:]


def test_submit_on_a_cpu_cluster_requests_no_gpu_and_fails_fast(project, stubs):
    out, calls = _run(["bash", str(REPO / "slurm" / "submit.sh"), "tiny.yaml", "r1"], project, stubs)
    assert [c["prog"] for c in calls] == ["sbatch"] * 4
    jobs = [_opts(c) for c in calls]
    for opts, _ in jobs:
        assert "--kill-on-invalid-dep=yes" in opts
        assert not any("gpu" in o or "gres" in o for o in opts), opts
    stages = [script[1] for _, script in jobs[:3]]
    assert stages == ["slice", "sequence", "finetune"]
    assert jobs[0][0].count("--nodes=1") == 1 and "--ntasks-per-node=1" in jobs[0][0]
    assert not any(o.startswith("--dependency") for o in jobs[0][0])
    assert "--dependency=afterok:101" in jobs[1][0] and "--dependency=afterok:103" in jobs[3][0]
    assert jobs[0][1][1:4] == ["slice", "tiny.yaml", "r1"]
    assert jobs[3][1][0].endswith("evaluate.sbatch") and jobs[3][1][1].endswith("runs/tiny/r1")
    assert "evaluate  job 104" in out


def test_submit_gpu_shape_and_per_job_options(project, stubs):
    out, calls = _run(
        ["bash", str(REPO / "slurm" / "submit.sh"), "tiny.yaml", "r2", "stages.slice.batch_size=8"],
        project,
        stubs,
        GPUS_PER_NODE="4",
        NODES="2",
        CPUS_PER_TASK="8",
        SBATCH_EXTRA="--partition=gpu --account=me",
        STAGE_SBATCH_ARGS="--time=24:00:00 --mem=0",
        SBATCH_ARGS_sequence="--nodes=1 --ntasks-per-node=1 --gpus-per-node=1",
        EVAL_SBATCH_ARGS="--time=2:00:00",
    )
    (s_opts, s_script), (q_opts, _), (f_opts, _), (e_opts, _) = (_opts(c) for c in calls)
    for opt in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=8",
                "--partition=gpu", "--account=me", "--time=24:00:00", "--mem=0"):
        assert opt in s_opts and opt in f_opts, opt
    assert s_script[-1] == "stages.slice.batch_size=8"  # overrides reach the stages
    # the per-stage options come last, so they win over the computed shape
    assert q_opts[-3:] == ["--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=1"]
    assert "--ntasks-per-node=1" not in f_opts
    assert "--gpus=1" in e_opts and "--time=2:00:00" in e_opts and "--partition=gpu" in e_opts
    assert "--time=24:00:00" not in e_opts and "--gpus-per-node=4" not in e_opts


def test_resubmission_skips_finished_stages(project, stubs):
    run = project / "runs" / "tiny" / "r3"
    (run / "slice").mkdir(parents=True)
    (run / "slice" / "result.json").write_text("{}")
    out, calls = _run(["bash", str(REPO / "slurm" / "submit.sh"), "tiny.yaml", "r3"], project, stubs)
    assert "slice     done (result.json), not submitted" in out
    jobs = [_opts(c) for c in calls]
    assert [s[1] for _, s in jobs[:2]] == ["sequence", "finetune"]
    assert not any(o.startswith("--dependency") for o in jobs[0][0])  # nothing to wait for


def test_stage_job_runs_the_container_form_with_the_job_shape(project, stubs):
    ich3d = f"{sys.executable} -m ich3d.cli.main"  # several words, like "apptainer exec x.sif ich3d"
    out, calls = _run(
        ["bash", str(REPO / "slurm" / "stage.sbatch"), "slice", "tiny.yaml", "r4", "seed=1"],
        project,
        stubs,
        ICH3D=ich3d,
        SLURM_JOB_ID="7",
        SLURM_NNODES="2",
        SLURM_NTASKS_PER_NODE="4",
        SLURM_CPUS_PER_TASK="8",
    )
    (call,) = calls
    assert call["prog"] == "srun"
    args = call["args"]
    assert args[:4] == ["--kill-on-bad-exit=1", sys.executable, "-m", "ich3d.cli.main"]
    assert args[4:] == [
        "train", "tiny.yaml", "--stage", "slice", "--run-id", "r4", "--continue", "seed=1",
        "trainer.devices=4", "trainer.num_nodes=2", "trainer.strategy=ddp",
    ]
    assert not any("accelerator" in a for a in args)  # the config's (auto), not forced
    _, calls = _run(["bash", str(REPO / "slurm" / "evaluate.sbatch"), "runs/tiny/r4"], project, stubs, ICH3D=ich3d)
    assert calls[0]["args"][3:] == ["evaluate", "runs/tiny/r4", "--device", "auto", "--no-progress"]


def test_the_container_form_reaches_submit(project, stubs):
    ich3d = f"{sys.executable} -m ich3d.cli.main"
    out, calls = _run(["bash", str(REPO / "slurm" / "submit.sh"), "tiny.yaml", "r5"], project, stubs, ICH3D=ich3d)
    assert len(calls) == 4 and calls[0]["ICH3D"] == ich3d  # exported to the jobs
    assert "run directory: runs/tiny/r5" in out or "runs/tiny/r5" in out


def _array(opts):
    return next((o.split("=", 1)[1] for o in opts if o.startswith("--array=")), None)


def _dependency(opts):
    return next((o.split("=", 1)[1] for o in opts if o.startswith("--dependency=")), None)


def test_cross_validation_is_one_array_per_stage_chained_task_by_task(project, stubs):
    out, calls = _run(["bash", str(REPO / "slurm" / "submit.sh"), "tiny.yaml", "cv1", "data.folds=3"], project, stubs)
    jobs = [_opts(c) for c in calls]
    assert [script[0].rsplit("/", 1)[1] for _, script in jobs] == ["stage.sbatch"] * 3 + ["evaluate.sbatch"]
    assert [script[1] for _, script in jobs[:3]] == ["slice", "sequence", "finetune"]
    assert [_array(opts) for opts, _ in jobs] == ["0-2", "0-2", "0-2", None]
    # each fold's stage waits for the same fold's previous stage; evaluate for every fold's last
    assert [_dependency(opts) for opts, _ in jobs] == [None, "aftercorr:101", "aftercorr:102", "afterok:103"]
    for opts, _ in jobs:
        assert "--kill-on-invalid-dep=yes" in opts
    for opts, script in jobs[:3]:
        assert "--output=slurm-%x-%A_%a.out" in opts  # one log per fold task
        assert script[2:] == ["tiny.yaml", "cv1", "data.folds=3"]  # the fold comes from the task id
    assert jobs[3][1][1].endswith("runs/tiny/cv1")  # the whole run: out-of-fold evaluation
    assert "slice     job 101 (array 0-2: one task per fold)" in out and "evaluate  job 104" in out
    _, calls = _run(["bash", str(REPO / "slurm" / "submit.sh"), "tiny.yaml", "cv1", "data.folds=5"],
                    project, stubs, ARRAY_LIMIT="2")
    assert [_array(_opts(c)[0]) for c in calls[:3]] == ["0-4%2"] * 3


def test_cross_validation_resubmission_submits_each_fold_from_its_first_unfinished_stage(project, stubs):
    run = project / "runs" / "tiny" / "cv2"
    done = {1: ("slice", "sequence", "finetune"), 2: ("slice",)}  # fold 0: nothing finished
    for fold, stages in done.items():
        for stage in stages:
            (run / f"fold{fold}" / stage).mkdir(parents=True)
            (run / f"fold{fold}" / stage / "result.json").write_text("{}")
    (run / "fold0" / "slice").mkdir(parents=True)
    (run / "fold0" / "slice" / "last.ckpt").write_bytes(b"")  # interrupted: resubmitted (resumes)
    out, calls = _run(["bash", str(REPO / "slurm" / "submit.sh"), "tiny.yaml", "cv2", "data.folds=3"], project, stubs)
    jobs = [_opts(c) for c in calls]
    got = [(script[1] if "stage.sbatch" in script[0] else "evaluate", _array(opts), _dependency(opts))
           for opts, script in jobs]
    assert got == [
        ("slice", "0", None), ("sequence", "0", "aftercorr:101"), ("finetune", "0", "aftercorr:102"),
        ("sequence", "2", None), ("finetune", "2", "aftercorr:104"),
        ("evaluate", None, "afterok:103:105"),
    ]
    assert "slice     done (result.json) in fold(s) 1-2, not submitted" in out
    assert "finetune  done (result.json) in fold(s) 1, not submitted" in out
    (run / "fold2" / "sequence").mkdir()
    (run / "fold2" / "sequence" / "result.json").write_text("{}")
    (run / "fold2" / "finetune").mkdir()
    (run / "fold2" / "finetune" / "result.json").write_text("{}")
    _, calls = _run(["bash", str(REPO / "slurm" / "submit.sh"), "tiny.yaml", "cv2", "data.folds=4"], project, stubs)
    assert [_array(_opts(c)[0]) for c in calls[:3]] == ["0,3"] * 3  # folds 1 and 2 are done
    for fold in (0, 3):
        (run / f"fold{fold}").mkdir(exist_ok=True)
        for stage in ("slice", "sequence", "finetune"):
            (run / f"fold{fold}" / stage).mkdir(exist_ok=True)
            (run / f"fold{fold}" / stage / "result.json").write_text("{}")
    _, calls = _run(["bash", str(REPO / "slurm" / "submit.sh"), "tiny.yaml", "cv2", "data.folds=4"], project, stubs)
    ((opts, script),) = (_opts(c) for c in calls)  # every fold done: evaluate alone, at once
    assert script[0].endswith("evaluate.sbatch") and _dependency(opts) is None


def test_array_task_runs_its_fold(project, stubs):
    _, calls = _run(
        ["bash", str(REPO / "slurm" / "stage.sbatch"), "sequence", "tiny.yaml", "cv3", "data.folds=3"],
        project,
        stubs,
        SLURM_JOB_ID="57",
        SLURM_ARRAY_JOB_ID="55",
        SLURM_ARRAY_TASK_ID="2",
    )
    (call,) = calls
    assert call["args"][:2] == ["--kill-on-bad-exit=1", "ich3d"]
    assert call["args"][2:] == [
        "train", "tiny.yaml", "--stage", "sequence", "--run-id", "cv3", "--fold", "2", "--continue",
        "data.folds=3", "trainer.devices=1", "trainer.num_nodes=1",
    ]
    # the line the task runs is one ich3d accepts, and it lands in the fold's run directory
    done = subprocess.run(
        [str(BIN / "ich3d"), *call["args"][2:], "--print-run-dir"], cwd=project, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(project / "runs" / "tiny" / "cv3" / "fold2")


def test_a_task_checkpointed_on_sigusr1_is_requeued_by_the_script_after_its_step(project, stubs, tmp_path):
    # the training step (srun) leaves the marker ich3d writes after its requeue checkpoint
    (stubs / "srun").write_text(_STUB + 'echo requeue > "$ICH3D_REQUEUE_MARKER"\n')
    (stubs / "scontrol").write_text(_STUB)
    (stubs / "scontrol").chmod(0o755)
    out, calls = _run(
        ["bash", str(REPO / "slurm" / "stage.sbatch"), "slice", "tiny.yaml", "cv4", "data.folds=3"],
        project, stubs, SLURM_JOB_ID="61", SLURM_ARRAY_JOB_ID="60", SLURM_ARRAY_TASK_ID="1", TMPDIR=str(tmp_path),
    )
    assert [c["prog"] for c in calls] == ["srun", "scontrol"]  # after the step, not from inside it
    assert calls[1]["args"] == ["requeue", "60_1"]  # this array task only
    assert "ich3d: requeueing job 60_1" in out and not list(tmp_path.glob("ich3d-requeue-*"))
    (stubs / "srun").write_text(_STUB)  # a step that ends without the marker: no requeue
    _, calls = _run(
        ["bash", str(REPO / "slurm" / "stage.sbatch"), "slice", "tiny.yaml", "r5"],
        project, stubs, SLURM_JOB_ID="62", TMPDIR=str(tmp_path),
    )
    assert [c["prog"] for c in calls] == ["srun"]
