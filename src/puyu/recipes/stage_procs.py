"""A nano training stage as several torchrun workers: the choice of processes and the launcher.

Why: on a 2-core CPU two single-thread processes that split each batch (DDP, gradients all-reduced over
gloo) train faster than one process whose two threads meet at every operator. Measured on a 2-core AMD
EPYC Zen 4 under AVX2 settings, fp32, 200 pretraining steps of the nano recipe: 44.1 / 40.9 s with
`torchrun --nproc_per_node=2` against 50.7 / 47.0 s for one 2-thread process (~13% faster), loss at step 200
equal to 4e-7 (README "Ninth round").

The launcher runs torchrun (`torch.distributed.run.main`, entered as `python -m puyu.recipes.stage_procs --standalone
--nproc_per_node=N -m puyu.recipes.stage_worker JOB` only so that a stop by signal ends without a traceback): its own
rendezvous on a free port, and it stops every worker when one fails. JOB is a JSON file in the stage's directory with the nano recipe, the stage's name, whether
to resume and the threads per worker; rank 0 writes the loop's summary, or the user-facing error it met,
to a second JSON file that the launcher reads back. The workers (`puyu.recipes.stage_worker`) run
`puyu.recipes.nano.run_training_stage`, the same function as a single-process stage, so checkpoints,
metrics.jsonl, the pretraining curve (rank 0) and --resume are those of `puyu train pretrain` under torchrun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from puyu import errors

JOB_FILE, RESULT_FILE = "procs_job.json", "procs_result.json"


def rank_result_file(rank: int | str) -> str:
    """The file in which worker `rank` > 0 leaves the user-facing error it met (rank 0 uses RESULT_FILE); "*" gives
    the glob pattern of them all."""
    return f"procs_result.rank{rank}.json"


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, as `taskset` or a container sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def stage_procs(r, name: str, cores: int | None = None) -> tuple[int, int | str | None]:
    """(processes, threads per process) for training stage `name` of nano recipe `r`.

    `r.procs` "auto": 2 processes when the device is the CPU, the thread budget (`r.threads`, or every core
    for "auto"/None) is at least 2 and the stage's batch splits evenly in two; else 1 process with `r.threads`
    as given. With N > 1 processes each gets max(1, budget // N) threads. Two, not more: only 2 cores were
    measured; on a larger CPU "auto" gives each of the 2 processes half the cores. An int N is used as given
    (`NanoRecipe.validate` checks that every batch splits)."""
    cores = available_cores() if cores is None else cores
    budget = cores if r.threads in ("auto", None) else int(r.threads)
    batch = getattr(r, name).batch_size
    if r.procs == "auto":
        n = 2 if r.device in (None, "cpu") and budget >= 2 and batch % 2 == 0 else 1
    else:
        n = int(r.procs)
    if n == 1:
        return 1, r.threads
    if n > budget:
        print(f"[nano] warning: {name}: procs {n} with a budget of {budget} thread(s) on {cores} core(s): the {n} "
              f"single-thread workers share the cores and train slower than procs: auto", file=sys.stderr, flush=True)
    return n, max(1, budget // n)


def term_when_parent_dies() -> None:
    """SIGTERM to this process when its parent ends (Linux prctl PR_SET_PDEATHSIG); nothing elsewhere. Called in
    torchrun's process before exec (by the launcher) and at each worker's start."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: Ctrl-C still stops the workers
        pass


def _stop(proc: subprocess.Popen) -> None:
    """After our KeyboardInterrupt: let torchrun stop its workers. A Ctrl-C in the terminal reached it too (give it
    5 s); a SIGINT sent to this process alone did not, so pass one on (30 s more); then SIGKILL (the workers then
    end by their parent-death signal). A second Ctrl-C while waiting kills at once."""
    try:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        proc.kill()
        proc.wait()


def _read_result(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def run_in_procs(r, name: str, procs: int, threads: int, resume: bool = False) -> dict:
    """Train stage `name` as `procs` torchrun workers of `threads` threads each; return rank 0's summary.
    Raises the worker's own PuyuError (ConfigError, CheckpointError, ...) when rank 0 (else another rank) met one,
    else TrainingError naming torchrun's exit status (its report, with each worker's traceback, is above);
    KeyboardInterrupt once torchrun and its workers have stopped. The job and result files are removed either way."""
    from puyu.train.recipe import to_dict

    d = Path(r.out_dir) / name
    d.mkdir(parents=True, exist_ok=True)
    job, result = d / JOB_FILE, d / RESULT_FILE
    for stale in (result, *d.glob(rank_result_file("*"))):  # an interrupted run's
        stale.unlink(missing_ok=True)
    job.write_text(json.dumps({"recipe": to_dict(r), "stage": name, "resume": resume, "threads": threads}))
    # torchrun itself (torch.distributed.run.main), entered through this module so that a stop by signal ends quietly
    cmd = [sys.executable, "-m", "puyu.recipes.stage_procs", "--standalone", f"--nproc_per_node={procs}",
           "-m", "puyu.recipes.stage_worker", str(job)]
    # torchrun sets OMP_NUM_THREADS=1 for its workers (with a warning) unless it is set; the loop sets torch's
    # threads itself from the job, this only keeps OpenMP's own pool from being sized for the whole machine.
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    # Our own end by any signal (SIGKILL included) ends torchrun through the parent-death signal, and torchrun's
    # end ends the workers through theirs (stage_worker), so no orphan goes on writing into the stage's directory.
    proc = subprocess.Popen(cmd, env=env, preexec_fn=term_when_parent_dies)
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        _stop(proc)
        raise
    finally:
        job.unlink(missing_ok=True)
    got = _read_result(result)
    for other in sorted(d.glob(rank_result_file("*"))):
        if "error" not in got and "summary" not in got:  # rank 0 left nothing: another rank's error, if any
            got = _read_result(other)
        other.unlink()
    result.unlink(missing_ok=True)
    from puyu.train import pretrain

    if "error" in got:  # the worker's class where it is one of the common ones, else TrainingError
        cls = getattr(errors, got["error"], None) or getattr(pretrain, got["error"], None)
        if not (isinstance(cls, type) and issubclass(cls, errors.PuyuError)):
            cls = pretrain.TrainingError
        raise cls(got["message"])
    if rc != 0 or "summary" not in got:
        raise pretrain.TrainingError(f"{name}: torchrun with {procs} workers exited with status {rc} (its report and "
                                   f"the workers' output are above); rerun with --set procs=1 to train in one "
                                   f"process, or with --resume to continue from the last checkpoint")
    return got["summary"]


def torchrun(argv: list[str]) -> None:
    """torchrun (`torch.distributed.run.main`) on `argv`, ending with status 128 + N and no traceback when signal N
    stopped it (its workers are stopped by then; the launcher tells the user how to resume)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main

    try:
        main(argv)
    except SignalException as e:
        sys.exit(128 + int(e.sigval))


if __name__ == "__main__":
    torchrun(sys.argv[1:])
