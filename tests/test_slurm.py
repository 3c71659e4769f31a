"""slurm/ against a real scheduler: a single-node Slurm started here (`make test-slurm`).

``tests/slurm/single-node.sh`` installs Debian's slurm-wlm when it is absent (apt-get), writes a
CPU-only, one-node configuration and starts munged, slurmctld and slurmd (root needed). The jobs
are CPU-only with a tiny model: the chain of four jobs, a failing stage and its resubmission, a
stage preempted mid-epoch with ``scancel --signal=USR1`` and a 2-task DDP stage; and a 3-fold
cross-validation run as job arrays (one task per fold, ``aftercorr``) with one array task preempted,
run to the out-of-fold evaluation, and a failing fold task, its cancelled dependants and the
resubmission.

Marked ``slurm`` and ``slow``: never part of ``make test``.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from _train_helpers import make_cache, tiny_raw_config, write_config

from ich3d.tracking.loggers import wandb_run_id
from ich3d.tracking.offline import read_offline_run

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SINGLE_NODE = REPO / "tests" / "slurm" / "single-node.sh"
ICH3D = str(Path(sys.executable).with_name("ich3d"))
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
SLICE_STEPS_PER_EPOCH, SLICE_EPOCHS = 30, 2


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.fail("the Slurm tests install (apt-get) and start slurmctld/slurmd: run them as root")
    done = subprocess.run(["bash", str(SINGLE_NODE), "start"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "a test step ran" in done.stdout
    return True


@pytest.fixture(scope="module")
def work(cluster, tmp_path_factory):
    """A folder with a tiny cache and config; jobs run there (sbatch's working directory)."""
    root = tmp_path_factory.mktemp("slurm")
    cache = make_cache(root, patients=12)
    raw = tiny_raw_config(cache, root)
    raw["stages"]["slice"].update(
        {"samples_per_epoch": SLICE_STEPS_PER_EPOCH * 10, "max_epochs": SLICE_EPOCHS}
    )  # batch 10
    raw["trainer"]["log_every_n_steps"] = 2
    write_config(root / "tiny.yaml", raw)
    return root


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(ICH3D=ICH3D, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", WANDB_MODE="offline")
    env.update(extra)
    return env


def _submit_chain(work, *args, **env):
    done = subprocess.run(
        ["bash", str(REPO / "slurm" / "submit.sh"), "tiny.yaml", *args],
        cwd=work, env=_env(**env), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    jobs = dict(re.findall(r"^(\w+)\s+job (\d+)\b", done.stdout, flags=re.M))
    return jobs, done.stdout


def _sbatch(work, *args):
    done = subprocess.run(
        ["sbatch", "--parsable", *args], cwd=work, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def job(jid: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (JobState, ExitCode, Restarts, Reason ...)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", jid], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait(jids, timeout=900):
    """Wait until every job is in a final state; return their states."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        states = {j: job(j).get("JobState", "?") for j in jids}
        if all(s in DONE for s in states.values()):
            return states
        time.sleep(2)
    raise AssertionError(f"jobs still not finished after {timeout} s: {states}")


def _logs(work):
    return {p.name: p.read_text(errors="replace") for p in Path(work).glob("slurm-*.out")}


def _no_traceback(work):
    bad = [name for name, text in _logs(work).items() if "Traceback" in text]
    assert not bad, {name: _logs(work)[name][-3000:] for name in bad}


def _rows(path):
    frame = pd.read_csv(path)
    keys = collections.Counter()
    for _, row in frame.iterrows():
        names = tuple(sorted(k for k, v in row.items() if k != "step" and pd.notna(v)))
        keys[(int(row["step"]), names)] += 1
    return keys


@pytest.fixture(scope="module")
def chain(work):
    jobs, out = _submit_chain(work, "c1")
    assert list(jobs) == ["slice", "sequence", "finetune", "evaluate"], out
    return jobs


def test_preempted_stage_resumes_from_its_mid_epoch_checkpoint(work, chain):
    jid = _sbatch(work, "--job-name=ich3d-pre", str(REPO / "slurm" / "stage.sbatch"), "slice", "tiny.yaml", "pre")
    stage_dir = work / "runs" / "tiny" / "pre" / "slice"
    end = time.monotonic() + 600
    while not (stage_dir / "last.ckpt").is_file():  # written when epoch 1 starts
        assert time.monotonic() < end and job(jid).get("JobState") in ("PENDING", "RUNNING"), job(jid)
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", jid], check=True)
    while (info := job(jid)).get("Restarts") != "1" or info.get("JobState") != "PENDING":
        # ich3d checkpoints at the next batch and runs scontrol requeue
        assert time.monotonic() < end and info.get("JobState") not in DONE, info
        time.sleep(0.5)
    # Slurm holds a requeued job for about two minutes (EligibleTime); start it now, but not
    # within the second its old credential was revoked: slurmd compares the new credential's
    # creation time with the revocation at one-second resolution and refuses an equal one
    # ("Killing non-startable batch JobId: Job credential revoked", seen once at low load)
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], capture_output=True)
    states = wait([jid, chain["slice"]])
    assert states == {jid: "COMPLETED", chain["slice"]: "COMPLETED"}
    info = job(jid)
    assert info["Restarts"] == "1" and info["ExitCode"] == "0:0"
    log = _logs(work)[f"slurm-ich3d-pre-{jid}.out"]
    saved = re.search(r"stage slice checkpointed \((hpc_ckpt_\d+\.ckpt), step (\d+)\) and requeued", log)
    assert saved, log[-3000:]
    step = int(saved.group(2))
    assert SLICE_STEPS_PER_EPOCH < step < 2 * SLICE_STEPS_PER_EPOCH  # mid-epoch (epoch 1)
    assert f"resuming from {saved.group(1)}" in log and "restart 1," in log
    reference = work / "runs" / "tiny" / "c1" / "slice"
    result = json.loads((stage_dir / "result.json").read_text())
    assert result["global_step"] == json.loads((reference / "result.json").read_text())["global_step"]
    assert result["global_step"] == SLICE_STEPS_PER_EPOCH * SLICE_EPOCHS
    rows = _rows(stage_dir / "metrics.csv")
    assert rows == _rows(reference / "metrics.csv")  # every step's row exactly once
    assert all(n == 1 for n in rows.values())
    assert not list(stage_dir.glob("hpc_ckpt_*"))  # the requeue checkpoint is gone once done
    _no_traceback(work)


def test_chain_on_cpu_completes_with_a_report(work, chain):
    states = wait(list(chain.values()))
    assert set(states.values()) == {"COMPLETED"}, states
    run = work / "runs" / "tiny" / "c1"
    assert all((run / s / "result.json").is_file() for s in ("slice", "sequence", "finetune"))
    assert (run / "evaluation" / "report.md").is_file()
    assert "finetune" in (run / "evaluation" / "report.md").read_text()
    for jid in chain.values():
        assert "Gres" not in job(jid).get("TresPerNode", "")  # no GPU asked on a CPU cluster
    _no_traceback(work)


def test_failing_stage_cancels_its_dependants_and_the_resubmission_completes(work):
    cheap = "stages.slice.samples_per_epoch=50"
    broken = work / "broken-node.sh"  # the sequence job's node setup fails (exit 3)
    broken.write_text('echo "module load: cuda/99 not found" >&2\nexit 3\n')
    jobs, _ = _submit_chain(work, "f1", cheap, SBATCH_ARGS_sequence=f"--export=ALL,ICH3D_SETUP={broken}")
    states = wait(list(jobs.values()))
    assert states == {
        jobs["slice"]: "COMPLETED",
        jobs["sequence"]: "FAILED",
        jobs["finetune"]: "CANCELLED",
        jobs["evaluate"]: "CANCELLED",
    }
    assert job(jobs["sequence"])["ExitCode"] == "3:0"
    assert "cuda/99 not found" in _logs(work)[f"slurm-ich3d-sequence-{jobs['sequence']}.out"]
    assert job(jobs["finetune"])["Reason"] == "DependencyNeverSatisfied"
    slice_result = (work / "runs" / "tiny" / "f1" / "slice" / "result.json").read_bytes()
    again, out = _submit_chain(work, "f1", cheap)
    assert "slice     done (result.json), not submitted" in out and "slice" not in again
    states = wait(list(again.values()))
    assert set(states.values()) == {"COMPLETED"}, states
    run = work / "runs" / "tiny" / "f1"
    assert (run / "slice" / "result.json").read_bytes() == slice_result
    assert (run / "evaluation" / "report.md").is_file()


def test_ddp_stage_with_two_tasks_logs_each_validation_auc_once(work, chain):
    jid = _sbatch(
        work, "--job-name=ich3d-ddp", "--ntasks-per-node=2", str(REPO / "slurm" / "stage.sbatch"),
        "slice", "tiny.yaml", "ddp",
    )
    assert wait([jid]) == {jid: "COMPLETED"}
    log = _logs(work)[f"slurm-ich3d-ddp-{jid}.out"]
    assert "global batch 10 = 5 per process x 2" in log
    stage_dir = work / "runs" / "tiny" / "ddp" / "slice"
    metrics = pd.read_csv(stage_dir / "metrics.csv")
    val = metrics.dropna(subset=["val/auc"])
    assert val["epoch"].tolist() == list(range(SLICE_EPOCHS))  # one row per validation, not per rank
    reference = pd.read_csv(work / "runs" / "tiny" / "c1" / "slice" / "metrics.csv").dropna(subset=["val/auc"])
    assert val["val/n"].tolist() == reference["val/n"].tolist()  # every val slice once
    # global batch: the same number of optimizer steps as one process
    assert json.loads((stage_dir / "result.json").read_text())["global_step"] == SLICE_STEPS_PER_EPOCH * SLICE_EPOCHS
    _no_traceback(work)



# --- cross-validation: job arrays ---------------------------------------------------------

CV_FOLDS, CV_STEPS_PER_EPOCH = 3, 20
STAGES = ("slice", "sequence", "finetune")


@pytest.fixture(scope="module")
def cv_work(cluster, tmp_path_factory):
    """A folder with a tiny cache and a 3-fold config (W&B offline); jobs run there."""
    root = tmp_path_factory.mktemp("slurm-cv")
    cache = make_cache(root, patients=15)
    raw = tiny_raw_config(cache, root, tracking={"mode": "offline", "project": "ich3d-slurm"})
    raw["data"]["folds"] = CV_FOLDS
    raw["stages"]["slice"].update({"samples_per_epoch": CV_STEPS_PER_EPOCH * 10, "max_epochs": 2})  # batch 10
    raw["trainer"]["log_every_n_steps"] = 2
    write_config(root / "tiny.yaml", raw)
    return root


def _submitted(out: str) -> dict[str, tuple[str, str | None]]:
    """submit.sh's lines ``STAGE job ID [(array SPEC: ...)]`` as {stage: (job id, array spec)}."""
    found = re.findall(r"^(\w+)\s+job (\d+)(?: \(array ([\d,-]+):.*\))?$", out, flags=re.M)
    return {stage: (jid, spec or None) for stage, jid, spec in found}


def tasks(jid: str) -> dict[int | None, dict[str, str]]:
    """Every task of a job (array) as {array task id (None: not an array): scontrol's fields}."""
    out = subprocess.run(["scontrol", "show", "job", "-o", jid], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        info = dict(re.findall(r"(\w+)=(\S*)", line))
        if info:
            task = info.get("ArrayTaskId")
            found[int(task) if task and task.isdigit() else None] = info
    return found


def wait_tasks(jids, timeout=900):
    """Wait until every task of every job is in a final state; return {jid: {task: state}}."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        states = {j: {t: i.get("JobState", "?") for t, i in tasks(j).items()} for j in jids}
        if all(s and all(v in DONE for v in s.values()) for s in states.values()):
            return states
        time.sleep(2)
    raise AssertionError(f"jobs still not finished after {timeout} s: {states}")


def _wandb_runs(fold_dir: Path) -> collections.Counter:
    """How many offline W&B run folders (attempts) each W&B run id has in one fold's run."""
    return collections.Counter(p.name.rsplit("-", 1)[1] for p in (fold_dir / "wandb").glob("offline-run-*"))


@pytest.fixture(scope="module")
def cv_chain(cv_work):
    jobs, out = _submit_chain(cv_work, "cv")
    assert _submitted(out) == {
        "slice": (jobs["slice"], "0-2"), "sequence": (jobs["sequence"], "0-2"),
        "finetune": (jobs["finetune"], "0-2"), "evaluate": (jobs["evaluate"], None),
    }, out
    return jobs


CHEAP = ["stages.slice.samples_per_epoch=20", "stages.slice.max_epochs=1", "tracking.mode=disabled"]


@pytest.fixture(scope="module")
def cv_failing(cv_work, cv_chain):
    """A second 3-fold run whose fold 2 fails in its sequence task (node setup exits 3)."""
    broken = cv_work / "broken-fold2.sh"
    broken.write_text('if [ "${SLURM_ARRAY_TASK_ID:-}" = 2 ]; then echo "module load: cuda/99 not found" >&2; exit 3; fi\n')
    jobs, _ = _submit_chain(cv_work, "cvf", *CHEAP, SBATCH_ARGS_sequence=f"--export=ALL,ICH3D_SETUP={broken}")
    return jobs


def test_preempted_fold_task_resumes_from_its_checkpoint_like_an_uninterrupted_fold(cv_work, cv_chain, cv_failing):
    # (cv_failing: submitted now, so that its jobs queue behind these and the two runs overlap)
    arr = cv_chain["slice"]
    task = f"{arr}_1"  # fold 1's slice stage
    fold1, fold0 = (cv_work / "runs" / "tiny" / "cv" / f"fold{k}" for k in (1, 0))
    end = time.monotonic() + 600
    while not (fold1 / "slice" / "last.ckpt").is_file():  # written when epoch 1 starts
        assert time.monotonic() < end and job(task).get("JobState") in ("PENDING", "RUNNING"), job(task)
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", task], check=True)
    while (info := job(task)).get("Restarts") != "1" or info.get("JobState") != "PENDING":
        assert time.monotonic() < end and info.get("JobState") not in DONE, info  # requeued, this task only
        time.sleep(0.5)
    time.sleep(2)  # not within the second of the revoked credential (test above)
    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], capture_output=True)
    states = wait_tasks([arr])[arr]
    assert states == {0: "COMPLETED", 1: "COMPLETED", 2: "COMPLETED"}, states
    info = tasks(arr)[1]
    assert info["Restarts"] == "1" and info["ExitCode"] == "0:0"
    assert all(tasks(arr)[k]["Restarts"] == "0" for k in (0, 2))  # the other folds ran once
    log = _logs(cv_work)[f"slurm-ich3d-slice-{arr}_1.out"]
    assert "ich3d: slice of run cv fold 1 (job" in log and "restart 1," in log
    saved = re.search(r"stage slice checkpointed \((hpc_ckpt_\d+\.ckpt), step (\d+)\) and requeued", log)
    assert saved, log[-3000:]
    assert CV_STEPS_PER_EPOCH < int(saved.group(2)) < 2 * CV_STEPS_PER_EPOCH  # mid-epoch (epoch 1)
    assert f"resuming from {saved.group(1)}" in log
    # it ends like the uninterrupted fold 0: same steps, every step's row exactly once
    result = json.loads((fold1 / "slice" / "result.json").read_text())
    assert result["global_step"] == CV_STEPS_PER_EPOCH * 2
    assert result["global_step"] == json.loads((fold0 / "slice" / "result.json").read_text())["global_step"]
    rows = _rows(fold1 / "slice" / "metrics.csv")
    assert rows == _rows(fold0 / "slice" / "metrics.csv") and all(n == 1 for n in rows.values())
    assert not list((fold1 / "slice").glob("hpc_ckpt_*"))
    # W&B: both attempts of the task logged to the fold's own slice run (same id, resumed)
    ids = {k: wandb_run_id("tiny", f"cv/fold{k}", "slice") for k in range(CV_FOLDS)}
    assert len(set(ids.values())) == CV_FOLDS
    assert _wandb_runs(fold1)[ids[1]] == 2 and _wandb_runs(fold0)[ids[0]] == 1
    assert f"ich3d: requeueing job {task}" in log  # by the batch script, after the step ended
    attempts = [read_offline_run(a) for a in sorted((fold1 / "wandb").glob(f"offline-run-*-{ids[1]}"))]
    assert [a["run"]["name"] for a in attempts] == ["tiny/cv/fold1/slice"] * 2
    # the first attempt's W&B run was finished, not killed by the requeue: its history is there
    steps = [row["trainer/global_step"] for row in attempts[0]["history"] if "trainer/global_step" in row]
    assert steps and max(steps) <= int(saved.group(2))


def test_fold_arrays_run_to_the_out_of_fold_evaluation(cv_work, cv_chain):
    states = wait_tasks(list(cv_chain.values()))
    for stage in STAGES:
        assert states[cv_chain[stage]] == {k: "COMPLETED" for k in range(CV_FOLDS)}, (stage, states)
    assert states[cv_chain["evaluate"]] == {None: "COMPLETED"}, states
    run = cv_work / "runs" / "tiny" / "cv"
    for k in range(CV_FOLDS):
        assert all((run / f"fold{k}" / s / "result.json").is_file() for s in STAGES)
        counts = _wandb_runs(run / f"fold{k}")
        for stage in STAGES:  # one W&B run per fold and stage, the fold in its id
            assert counts[wandb_run_id("tiny", f"cv/fold{k}", stage)] >= 1
    splits = json.loads((cv_work / "cache" / "splits.json").read_text())
    oof = pd.read_csv(run / "evaluation" / "oof_predictions.csv", dtype={"key": str})
    assert sorted(oof["key"]) == sorted(splits["keys"]["train"] + splits["keys"]["val"])  # each once
    for k, keys in enumerate(splits["keys"]["folds"]):
        assert sorted(oof.loc[oof["fold"] == k, "key"]) == keys  # scored by the fold that validated on it
    assert {"max", "p95", "svm", "sequence", "finetune"} <= set(oof.columns)
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())["cross_validation"]
    assert metrics["folds"] == CV_FOLDS and metrics["n_oof"] == len(oof)
    assert "## Cross-validation" in (run / "evaluation" / "report.md").read_text()
    _no_traceback(cv_work)


def test_failed_fold_task_cancels_its_own_later_tasks_and_evaluate_and_the_resubmission_completes(
    cv_work, cv_failing
):
    jobs = cv_failing
    states = wait_tasks(list(jobs.values()))
    assert states == {
        jobs["slice"]: {0: "COMPLETED", 1: "COMPLETED", 2: "COMPLETED"},
        jobs["sequence"]: {0: "COMPLETED", 1: "COMPLETED", 2: "FAILED"},
        jobs["finetune"]: {0: "COMPLETED", 1: "COMPLETED", 2: "CANCELLED"},  # the other folds ran on
        jobs["evaluate"]: {None: "CANCELLED"},
    }, states
    assert tasks(jobs["sequence"])[2]["ExitCode"] == "3:0"
    assert tasks(jobs["finetune"])[2]["Reason"] == "DependencyNeverSatisfied"
    assert "cuda/99 not found" in _logs(cv_work)[f"slurm-ich3d-sequence-{jobs['sequence']}_2.out"]
    run = cv_work / "runs" / "tiny" / "cvf"
    kept = {k: (run / f"fold{k}" / "finetune" / "result.json").read_bytes() for k in (0, 1)}
    again, out = _submit_chain(cv_work, "cvf", *CHEAP)
    assert "slice     done (result.json) in fold(s) 0-2, not submitted" in out
    assert "finetune  done (result.json) in fold(s) 0-1, not submitted" in out
    assert _submitted(out) == {
        "sequence": (again["sequence"], "2"), "finetune": (again["finetune"], "2"),
        "evaluate": (again["evaluate"], None),
    }, out
    states = wait_tasks(list(again.values()))
    assert states == {
        again["sequence"]: {2: "COMPLETED"}, again["finetune"]: {2: "COMPLETED"},
        again["evaluate"]: {None: "COMPLETED"},
    }, states
    assert {k: (run / f"fold{k}" / "finetune" / "result.json").read_bytes() for k in (0, 1)} == kept
    oof = pd.read_csv(run / "evaluation" / "oof_predictions.csv", dtype={"key": str})
    assert sorted(oof["fold"].unique()) == list(range(CV_FOLDS))
