"""The command line ``python nth_farthest.py`` (installed as ``nth-farthest``): train, resume,
branch or evaluate the models of a run folder.  ``python nth_farthest.py --help`` documents it.

Exit status: 0 success (a stop at the time budget included), 1 a model stopped on a NaN/Inf
loss or a file could not be written, 2 bad arguments or run folder, 130 interrupted.

Under an MPI launcher (``mpiexec -n N nth-farthest ...``, see :mod:`relational_rnn.mpi`) every
rank runs :func:`main`: rank 0 alone parses, checks and sends the checked plan to the others,
reads and writes the run folder and prints; every rank trains, a shard of each batch each, and
returns rank 0's exit status.
"""
from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

import numpy as np

import nth_farthest as nf
from relational_rnn.cli_parser import build_parser
from relational_rnn.checkpoint import CheckpointError, load_checkpoint
from relational_rnn.cli_run import (EvaluationPlan, RunPlan, UsageError, make_branch,
                                    resolve_branch, resolve_evaluate, resolve_new,
                                    resolve_resume)
from relational_rnn.curriculum import phase_starts
from relational_rnn.evaluation import evaluate
from relational_rnn.mpi import Cluster, MPIError, connect
from relational_rnn.outputs import branch_changes, summary_table, write_run_outputs
from relational_rnn.parallel import available_cores, check_workers
from relational_rnn.progress import StopRequest, fmt_duration, fmt_float
from relational_rnn.report import format_table
from relational_rnn.run_folder import (CHECKPOINT_NAME, CURVES_NAME, HEATMAP_NAME, RESULTS_NAME,
                                       model_path, remove_stale_temporaries, write_run_config)
from relational_rnn.threads import DEFAULT_THREADS, limit_blas_threads
from relational_rnn.trainer import train_model

PROG = "nth_farthest.py"


def evaluate_run(plan: EvaluationPlan) -> int:
    """Print the held-out metrics of every checkpoint of ``plan`` (averaged weights first, as
    training evaluates them, then the last iterate) on ``plan.size`` examples of the run's full
    task drawn with ``plan.seed``; writes nothing.  Returns the exit status: 1 if a loss is
    NaN/Inf, else 0."""
    t = plan.cfg.train
    K, F = t.num_objects, t.num_features
    same = plan.size == t.eval_size and plan.seed == t.eval_seed
    print(f"evaluating {plan.run_dir}: {plan.size} examples of the full {K} x {F} task, "
          f"held-out seed {plan.seed}" + (" (the run's own held-out set)" if same else ""),
          flush=True)
    eval_set = nf.make_eval_set(plan.seed, plan.size, K, F, dtype=t.dtype)
    rows, finite = [], True
    for kind, (model, info, average) in plan.checkpoints.items():
        versions = [("averaged", average), ("last", None)] if average is not None \
            else [(info["weights"], None)]
        for weights, applied in versions:
            if applied is not None:
                with applied.applied():
                    metrics = evaluate(model, eval_set, K)
            else:
                metrics = evaluate(model, eval_set, K)
            finite = finite and bool(np.isfinite(metrics["heldout_loss"]))
            rows.append((kind, info["step"], fmt_duration(info.get("wall_time")), weights,
                         fmt_float(metrics["heldout_acc"]), fmt_float(metrics["heldout_loss"]),
                         " ".join("-" if a is None else f"{a:.3f}"
                                  for a in metrics["acc_per_n"])))
    header = ("model", "step", "wall time", "weights", "held-out acc", "held-out loss",
              f"acc per n (n = 0 ... {K - 1})")
    print(format_table(header, rows, left=1), flush=True)
    if not finite:
        print(f"{PROG}: a held-out loss is NaN or Inf: those weights are broken", file=sys.stderr)
        return 1
    return 0


def _resolve(args, cluster: Cluster | None = None) -> RunPlan | EvaluationPlan:
    """The checked plan of this invocation; UsageError before anything is written."""
    if args.resume is not None and args.branch_from is not None:
        raise UsageError("--resume and --branch-from exclude each other: resume a branch "
                         "with --resume BRANCH_DIR")
    if args.evaluate is not None:
        if args.resume is not None or args.branch_from is not None:
            raise UsageError("--evaluate reads a run and trains nothing: it excludes "
                             "--resume and --branch-from")
        return resolve_evaluate(args)
    if args.resume is not None:
        plan = resolve_resume(args)
    elif args.branch_from is not None:
        plan = resolve_branch(args)
    else:
        plan = resolve_new(args)
    if cluster is not None:
        _check_ranks(args, cluster, plan.cfg.train.batch_size)
        return plan
    try:
        check_workers(args.workers, plan.cfg.train.batch_size)
    except ValueError as exc:
        raise UsageError(f"--{exc}") from None
    if args.workers > available_cores():
        raise UsageError(f"--workers {args.workers} exceeds the {available_cores()} cores this "
                         "process may use: more processes than cores only slow each step")
    return plan


def _check_ranks(args, cluster: Cluster, batch_size: int) -> None:
    """Under MPI: one process per rank, and one example of each batch per rank at least."""
    if args.workers != 1:
        raise UsageError(f"--workers {args.workers} and mpiexec both share each batch among "
                         "processes: under mpiexec each rank is one process, so leave out "
                         "--workers (mpiexec -n sets the number of processes)")
    if cluster.size > batch_size:
        raise UsageError(f"{cluster.size} MPI ranks exceed the batch size {batch_size}: every "
                         "rank needs one example of each batch at least")


def _announce(plan: RunPlan) -> None:
    t = plan.cfg.train
    starts = phase_starts(plan.cfg.phases)
    if len(plan.cfg.phases) > 1 and starts[-1] >= t.steps:
        print(f"warning: the curriculum reaches its last phase at step {starts[-1]}, after "
              f"--steps {t.steps}", file=sys.stderr)
    print(f"N-th Farthest: {t.num_objects} objects x {t.num_features} features, models "
          f"{', '.join(plan.kinds)}, preset {plan.cfg.preset}, {t.steps} steps of batch "
          f"{t.batch_size}, curriculum {t.curriculum or 'none'}; run folder {plan.run_dir}",
          flush=True)
    if plan.branch_parent is not None:
        branch = plan.cfg.branched_from
        at = ", ".join(f"{kind} at step {step}" for kind, step in branch["steps"].items())
        print(f"branched from {plan.branch_parent} ({at}); changed: {branch_changes(branch)}",
              flush=True)


def _train_all(plan: RunPlan, eval_set: nf.EvalSet | None, args,
               cluster: Cluster | None = None) -> tuple[list[dict], bool]:
    """Train each model of the plan in turn: ``(outcomes, interrupted)``.  Under MPI every
    rank takes the same path (the plan and the agreed stops are the same on each)."""
    outcomes = []
    root = cluster is None or cluster.root
    with StopRequest() as stop:
        try:
            for kind in plan.kinds:
                ckpt = plan.checkpoints.get(kind)
                if ckpt is not None and ckpt[1]["step"] >= plan.cfg.train.steps:
                    if root:
                        print(f"[{kind}] already at step {ckpt[1]['step']}/"
                              f"{plan.cfg.train.steps}: skipped", flush=True)
                    continue
                outcome = train_model(kind, plan.cfg, plan.run_dir, eval_set, resume_from=ckpt,
                                      log=lambda msg: print(msg, flush=True),
                                      progress=not args.no_progress, stop=stop,
                                      workers=args.workers, cluster=cluster)
                outcomes.append(outcome)
                if outcome["status"] == "interrupted":
                    return outcomes, True
        except KeyboardInterrupt:
            if cluster is not None:       # the other ranks may be mid-step: end them all
                raise
            print(f"\ninterrupted: the last checkpoints are kept; continue with "
                  f"--resume {plan.run_dir}", file=sys.stderr)
            return outcomes, True
    return outcomes, False


def _prepare_folder(plan: RunPlan) -> nf.EvalSet:
    """Write the run config (or make the branch), say what runs; the held-out set."""
    if plan.branch_parent is not None:
        make_branch(plan)
    else:
        os.makedirs(plan.run_dir, exist_ok=True)
        for name in remove_stale_temporaries(plan.run_dir):
            print(f"removed {name}, left by a write that was killed", flush=True)
        write_run_config(plan.run_dir, plan.cfg)
    for notice in plan.notices:
        print(notice, flush=True)
    _announce(plan)
    t = plan.cfg.train
    return nf.make_eval_set(t.eval_seed, t.eval_size, t.num_objects, t.num_features,
                            dtype=t.dtype)


def _run(plan: RunPlan, args, command: Sequence[str],
         cluster: Cluster | None = None) -> tuple[list[dict], bool, dict | None]:
    """Prepare the folder, train, write the outputs (under MPI: rank 0 alone writes)."""
    root = cluster is None or cluster.root
    eval_set = _prepare_folder(plan) if root else None
    outcomes, interrupted = _train_all(plan, eval_set, args, cluster)
    results = None
    if root:
        results = write_run_outputs(plan.run_dir, plan.cfg, eval_set=eval_set,
                                    command=command, make_plots=not args.no_plots)
    return outcomes, interrupted, results


def _write_failure(plan: RunPlan, exc: OSError) -> str:
    """One line for a file that could not be written: which, why, what is intact, and the
    command that continues."""
    what = exc.filename or "a file of the run"
    kept = []
    for kind in plan.kinds:
        try:
            info = load_checkpoint(model_path(plan.run_dir, kind, CHECKPOINT_NAME),
                                   averaged=False)[1]
            kept.append(f"{kind} step {info['step']}")
        except CheckpointError:
            pass
    intact = (f"the checkpoints ({', '.join(kept)}) are intact" if kept
              else "no checkpoint had been written yet")
    return (f"could not write {what}: {exc.strerror or exc}; {intact}; when there is room, "
            f"continue with: python nth_farthest.py --resume {plan.run_dir}")


def _set_threads(args) -> None:
    """--threads, else one BLAS thread unless the environment already says how many."""
    if args.threads is not None:
        limit_blas_threads(args.threads)
    elif not any(os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")):
        limit_blas_threads(DEFAULT_THREADS)


def _check_invocation(argv: list[str], cluster: Cluster | None):
    """``(args, plan, command)`` of this invocation, or the exit status when it stops here
    (--help, bad arguments or run folder: the reason is printed)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:            # argparse has printed the help or the error
        if cluster is None:
            raise
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    launch = ["mpiexec", "-n", str(cluster.size)] if cluster is not None else []
    command = [*launch, "python", "nth_farthest.py", *argv]
    try:
        plan = _resolve(args, cluster)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(plan, RunPlan):
        plan.cfg = plan.cfg.replace(commands=plan.cfg.commands + (shlex.join(command),))
    return args, plan, command


def _prepare(argv: list[str], cluster: Cluster | None):
    """:func:`_check_invocation` on this process, or under MPI on rank 0, which sends the
    outcome to the other ranks (they read no file: only rank 0 needs the run folder)."""
    if cluster is None:
        return _check_invocation(argv, None)
    if not cluster.root:
        return cluster.bcast_object(what="waiting for rank 0 to check the command")
    outcome = _check_invocation(argv, cluster)
    if not isinstance(outcome, int) and isinstance(outcome[1], EvaluationPlan):
        cluster.bcast_object((outcome[0], None, outcome[2]))      # the others do nothing
    else:
        cluster.bcast_object(outcome)
    return outcome


def _main(argv: list[str], cluster: Cluster | None) -> int:
    outcome = _prepare(argv, cluster)
    if isinstance(outcome, int):
        return outcome
    args, plan, command = outcome
    _set_threads(args)
    if plan is None:                      # --evaluate under MPI: rank 0 evaluates
        return 0
    if isinstance(plan, EvaluationPlan):
        return evaluate_run(plan)

    # -- every check passed: from here on files are written --------------------------------
    try:
        outcomes, interrupted, results = _run(plan, args, command, cluster)
    except OSError as exc:               # a full disk, a read-only folder, ...
        message = f"{PROG}: error: {_write_failure(plan, exc)}"
        if cluster is not None:          # the other ranks wait for this one: end them all
            cluster.abort(1, message)
        print(message, file=sys.stderr)
        return 1
    if results is not None:
        _print_outputs(plan, results)
    if interrupted:
        return 130
    if any(o["status"] == "nan" for o in outcomes):
        return 1
    return 0


def _print_outputs(plan: RunPlan, results: dict) -> None:
    print()
    print(summary_table(results))
    print(f"\noutputs in {plan.run_dir}: {RESULTS_NAME}"
          + (f", {CURVES_NAME}" if "learning_curves" in results else "")
          + (f", {HEATMAP_NAME}" if "attention_heatmap" in results else "")
          + ", <model>/metrics.jsonl, <model>/checkpoint.npz", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line of ``nth_farthest.py``; returns the exit status.  Under an MPI
    launcher every rank runs it and returns rank 0's status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cluster = connect()
    except MPIError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if cluster is None:
        return _main(argv, None)
    return cluster.run(lambda: _main(argv, cluster))
