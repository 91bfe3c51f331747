"""One torchrun worker of a nano training stage: `python -m puyu.recipes.stage_worker JOB`.

`puyu.recipes.stage_procs.run_in_procs` writes JOB (the recipe, the stage, resume, threads) and launches N of
these under torchrun; each runs `puyu.recipes.nano.run_training_stage`, and rank 0 writes the summary, or the
user-facing error it met, to the result file the launcher reads back. A module of its own so that the launcher,
which `nano` imports, does not import `nano` back.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from puyu import errors
from puyu.recipes.stage_procs import RESULT_FILE, rank_result_file, term_when_parent_dies


def main(argv: list[str] | None = None) -> int:
    """A torchrun worker: `python -m puyu.recipes.stage_worker JOB` (launched by `stage_procs.run_in_procs`)."""
    from puyu.recipes.nano import NanoRecipe, run_training_stage
    from puyu.train.recipe import from_dict

    # torchrun may itself be killed (SIGKILL leaves it no time to stop its workers): then stop too, rather than
    # train on as an orphan writing into the run. The check after covers a parent gone before the prctl.
    term_when_parent_dies()
    if os.getppid() == 1:
        os._exit(1)
    argv = sys.argv[1:] if argv is None else argv
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    rank = int(os.environ.get("RANK", "0"))
    # rank 0 writes its summary or error to the result file, another rank only its error to a file of its own; the
    # launcher prints the error once, so the workers print none
    result = job_path.parent / (RESULT_FILE if rank == 0 else rank_result_file(rank))

    def write(obj: dict) -> None:
        tmp = result.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj))
        tmp.replace(result)

    try:
        r = from_dict(NanoRecipe, job["recipe"])
        summary = run_training_stage(r, job["stage"], job["resume"], threads=job["threads"])
    except errors.PuyuError as e:
        write({"error": type(e).__name__, "message": str(e)})
        rc = 1
    except KeyboardInterrupt:  # Ctrl-C, or torchrun passing on the launcher's SIGINT: stop without a traceback
        rc = 130
    else:
        if rank == 0:
            write({"summary": summary})
        rc = 0
    # Leave at once: the process group is destroyed, and the interpreter's teardown can meet gloo's C++ threads
    # and abort (the same reason as in puyu.cli.main).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    main()
