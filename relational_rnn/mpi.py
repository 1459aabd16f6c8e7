"""Data-parallel training over MPI: ``mpiexec -n N nth-farthest ...`` (mpi4py, optional).

**When.**  :func:`connect` is called by the command line.  It imports ``mpi4py`` only when an MPI
launcher started this process with 2 or more ranks, as its environment tells: ``PMI_SIZE``
(MPICH's and Intel MPI's ``mpiexec``/Hydra, Slurm's ``srun --mpi=pmi2``),
``OMPI_COMM_WORLD_SIZE`` (Open MPI's ``mpirun``/``mpiexec``) or ``MV2_COMM_WORLD_SIZE``
(MVAPICH).  ``RELATIONAL_RNN_MPI=1`` uses MPI under any other launcher, ``RELATIONAL_RNN_MPI=0``
never.  Without these, nothing here imports mpi4py and training is that of one process.

**A step** (:class:`MPIParallel`).  Every rank draws the *same* batch from the same seeded data
generator -- the run's single stream, the one a checkpoint stores -- and takes its shard of it,
cut and weighted (``n_i / B``) by :func:`relational_rnn.parallel.batch_shards` and
:func:`relational_rnn.parallel.shard_gradient`, as ``--workers`` cuts and weights it.  Its
gradient goes into one flat buffer followed by four numbers (the weighted loss, the correct
count, and two stop votes), and ONE ``Allreduce(SUM)`` of that buffer, in place, gives every
rank the batch gradient, the batch loss, its accuracy and the votes.  Then every rank takes the
same Adam step on its own replica.

Why these choices (measured by ``benchmarks/bench_mpi.py`` on a 2-core machine):

* *Adam on every rank*, not on rank 0 followed by a broadcast of the parameters: the ranks run
  the same element-wise update at the same time, so it costs no more wall time than rank 0
  alone, while the broadcast would add a second message as large as the gradient to every step
  and leave the other ranks idle during Adam (RMC 8 x 16, 1.5 MB: Adam 0.75 ms, a broadcast
  0.17 ms between two ranks here, about 0.4 ms at 256 ranks on InfiniBand HDR by scatter and
  allgather, 2 bytes / bandwidth + (log2 P + P - 1) latency).  The price is
  Adam's moments on every rank (twice the parameters) and the need for every rank to receive
  the same sum: the usual Allreduce algorithms (ring, recursive doubling, Rabenseifner) give
  every rank the same bits, as the MPI standard recommends, and :class:`MPIParallel` checks
  it: the replicas' parameters and batch are compared on the first step and every
  ``_CHECK_EVERY`` steps, and a difference stops the run with a clear message.
* *Every rank draws the whole batch*, rather than rank 0 drawing it and scattering the shards:
  the ranks draw at the same time, so this costs what rank 0's draw costs anyway (0.3 ms for a
  batch of 128 at 8 x 16) and sends nothing.  The price: drawing does not shrink with more
  ranks, which limits weak scaling past ~64 ranks (``benchmarks/bench_mpi.py``).
* *A nonblocking Iallreduce, polled*: a rank inside a blocking MPI call can neither run Python's
  Ctrl-C handler nor notice that a peer hangs.  Polling lets Ctrl-C set the stop vote, and a
  rank that has waited ``RELATIONAL_RNN_MPI_TIMEOUT`` seconds (default 600) for the others
  stops the whole job with a message, never hangs.  It is as fast as the blocking call (1.3 MB
  between two ranks here: 0.30 to 0.33 ms polled, 0.29 to 0.33 ms blocking).

**Stops.**  The votes make every rank stop after the same step: rank 0 alone decides the time
budget; Ctrl-C on any rank (``mpiexec`` passes it to every rank) stops all; a NaN loss on any
shard makes the summed loss NaN on every rank.  An exception on any rank prints its traceback
and calls ``MPI_Abort``, which ends every rank (:meth:`Cluster.run`); a rank killed outright is
reported by the launcher, which ends the others.  Checkpoints are written atomically by rank 0
alone, so the last one stays intact whatever happens.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys
import time
import traceback
from collections.abc import Callable, Mapping

import numpy as np

from relational_rnn.parallel import _layout, batch_shards, check_workers, shard_gradient

SWITCH = "RELATIONAL_RNN_MPI"
TIMEOUT_VARIABLE = "RELATIONAL_RNN_MPI_TIMEOUT"
# The world size each launcher announces in the environment of the processes it starts.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
DEFAULT_TIMEOUT = 600.0
_SPIN = 0.02             # seconds of busy polling (about a step) before a waiting rank naps
_NAP = 0.0002
_FORWARD = 0.5           # seconds for the launcher to forward a last message before an abort
_SCALARS = 4             # after the gradient: weighted loss, correct count, two stop votes
_CHECK_EVERY = 1000      # steps between checks that every rank holds the same parameters


class MPIError(RuntimeError):
    """MPI was asked for (or a launcher detected) but cannot be used."""


def launcher_size(environ: Mapping[str, str]) -> tuple[str, int] | None:
    """``(variable, world size)`` announced by an MPI launcher in ``environ``, or None."""
    for name in SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            try:
                return name, int(value)
            except ValueError:
                raise MPIError(f"{name}={value!r} is not a process count") from None
    return None


def wanted(environ: Mapping[str, str]) -> tuple[bool, str]:
    """Whether this process should use MPI, and why (for messages)."""
    switch = environ.get(SWITCH, "").strip().lower()
    if switch in ("0", "no", "off", "false"):
        return False, f"{SWITCH}={switch}"
    if switch in ("1", "yes", "on", "true"):
        return True, f"told to use MPI ({SWITCH}={switch})"
    if switch:
        raise MPIError(f"{SWITCH} must be 1 (use MPI) or 0 (do not), got {switch!r}")
    found = launcher_size(environ)
    if found is None or found[1] <= 1:
        return False, "no MPI launcher"
    return True, f"started by an MPI launcher ({found[0]}={found[1]})"


def _timeout(environ: Mapping[str, str]) -> float:
    text = environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise MPIError(f"{TIMEOUT_VARIABLE} must be a number of seconds > 0, got {text!r}")
    return value


def connect(environ: Mapping[str, str] | None = None) -> "Cluster | None":
    """The MPI job this process is a rank of, or None when it runs alone (no launcher, one
    rank, or ``RELATIONAL_RNN_MPI=0``).  mpi4py is imported here and nowhere else."""
    environ = os.environ if environ is None else environ
    use, why = wanted(environ)
    if not use:
        return None
    timeout = _timeout(environ)
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MPIError(f"this process was {why}, but mpi4py cannot be imported ({exc}); "
                       "install it with: pip install -e \".[mpi]\" (or run without mpiexec, "
                       f"or set {SWITCH}=0)") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        return None
    return Cluster(MPI, comm, timeout)


class Cluster:
    """The ranks of one MPI job (``MPI.COMM_WORLD``): rank 0 is the root, which alone reads
    and writes the run folder.  Every wait for the other ranks is bounded by ``timeout``."""

    def __init__(self, MPI, comm, timeout: float = DEFAULT_TIMEOUT):
        self.MPI, self.comm, self.timeout = MPI, comm, float(timeout)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.root = self.rank == 0

    def __repr__(self) -> str:
        return f"Cluster(rank {self.rank} of {self.size})"

    # -- the collective operations, each bounded in time -----------------------------------

    def wait(self, request, what: str) -> None:
        """Poll ``request`` until it completes (Python signal handlers run meanwhile); abort
        the job when it takes longer than the timeout."""
        start = time.monotonic()
        while not request.Test():
            waited = time.monotonic() - start
            if waited > self.timeout:
                self.abort(1, f"no answer from the other ranks for {self.timeout:g} s while "
                              f"{what}: a rank hangs or has gone; stopping every rank "
                              f"({TIMEOUT_VARIABLE} sets this limit)")
            if waited > _SPIN:
                time.sleep(_NAP)

    def allreduce_sum(self, buffer: np.ndarray, what: str = "summing the gradients") -> None:
        """Sum ``buffer`` over the ranks, in place (one Allreduce)."""
        request = self.comm.Iallreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        self.wait(request, what)

    def bcast_object(self, value=None, what: str = "waiting for rank 0"):
        """Rank 0's ``value`` (a picklable object) on every rank."""
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL) if self.root else b""
        length = np.array([len(data)], dtype=np.int64)
        self.wait(self.comm.Ibcast(length, root=0), what)
        buffer = np.frombuffer(data, np.uint8).copy() if self.root \
            else np.empty(int(length[0]), np.uint8)
        self.wait(self.comm.Ibcast(buffer, root=0), what)
        return value if self.root else pickle.loads(buffer.tobytes())

    def same_everywhere(self, data: bytes, what: str) -> bool:
        """Whether every rank passed the same ``data`` (compared by digest)."""
        mine = np.frombuffer(hashlib.blake2b(data, digest_size=16).digest(), np.uint8)
        every = np.empty((self.size, mine.size), np.uint8)
        self.wait(self.comm.Iallgather(mine, every), what)
        return bool((every == every[0]).all())

    # -- the job's life ------------------------------------------------------------------

    def say(self, message: str) -> None:
        """A line on stderr naming this rank."""
        print(f"rank {self.rank} of {self.size}: {message}", file=sys.stderr, flush=True)

    def abort(self, code: int, message: str) -> None:
        """Print ``message`` and end every rank of the job (MPI_Abort) with exit ``code``."""
        self.say(message)
        sys.stdout.flush()
        # The launcher forwards each rank's output through a pipe; give it a moment to pass
        # the message on before MPI_Abort has every process killed.
        time.sleep(_FORWARD)
        self.comm.Abort(code)
        os._exit(code)                    # should MPI_Abort return before the launcher ends us

    def run(self, main: Callable[[], int]) -> int:
        """Run ``main`` on this rank and return the exit status of rank 0, which every rank
        returns.  Anything that escapes ``main`` on any rank (an exception, a second Ctrl-C)
        ends every rank at once: a rank that left the lockstep would leave the others waiting."""
        try:
            status = main()
        except KeyboardInterrupt:
            self.abort(130, "interrupted; stopping every rank (the last checkpoints are kept)")
        except BaseException as exc:       # SystemExit included: the others would wait for us
            code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
            sys.stderr.write(traceback.format_exc())
            self.abort(code or 1, f"{type(exc).__name__}: {exc}; stopping every rank (the "
                                  "last checkpoints, written by rank 0, are kept)")
        return int(self.bcast_object(status, "waiting for rank 0 to finish the run"))

    def data_parallel(self, model) -> "MPIParallel":
        return MPIParallel(model, self)


class MPIParallel:
    """The gradient of a batch for ``model``, summed over the ranks of ``cluster``: the same
    interface as :class:`relational_rnn.parallel.DataParallel` (``gradient``, ``agreed_stop``,
    ``workers``, ``root``, a context manager)."""

    def __init__(self, model, cluster: Cluster):
        self.model, self.cluster = model, cluster
        self.workers, self.root = cluster.size, cluster.root
        self._named = list(model.named_parameters())
        layout, size = _layout({name: p for name, p, _ in self._named})
        self._flat = np.zeros(size + _SCALARS, dtype=model.dtype)
        self._grads = {name: self._flat[a:b].reshape(shape) for name, a, b, shape in layout}
        self._scalars = self._flat[size:]
        self._agreed = (False, False)
        self._steps = 0

    def gradient(self, x: np.ndarray, y: np.ndarray, votes: Callable | None = None):
        """Set ``model.grads`` to dL/dparams of the batch (every rank passes the same x (B, T,
        W_in) and y (B,)); returns ``(L, correct)`` of the whole batch.  ``votes`` gives this
        rank's ``(out_of_time, interrupted)``; :meth:`agreed_stop` then holds their sum."""
        check_workers(self.workers, len(y))
        if self._steps % _CHECK_EVERY == 0:
            self._check_replicas(x, y)
        self._steps += 1
        shard = batch_shards(len(y), self.workers)[self.cluster.rank]
        self.model.zero_grad()
        loss, correct = shard_gradient(self.model, *shard.take(x, y), shard.weight)
        for name, _, g in self._named:
            np.copyto(self._grads[name], g)
        out_of_time, interrupted = votes() if votes is not None else (False, False)
        self._scalars[:] = (loss, correct, out_of_time, interrupted)
        self.cluster.allreduce_sum(self._flat)
        for name, _, g in self._named:
            np.copyto(g, self._grads[name])
        total, right, late, stopped = (float(v) for v in self._scalars)
        self._agreed = (late > 0, stopped > 0)
        return total, int(round(right))

    def agreed_stop(self) -> tuple[bool, bool]:
        """``(out_of_time, interrupted)``: whether any rank voted so in the last step."""
        return self._agreed

    def _check_replicas(self, x: np.ndarray, y: np.ndarray) -> None:
        data = b"".join(np.ascontiguousarray(a).tobytes()
                        for a in (*(p for _, p, _ in self._named), x, y))
        if not self.cluster.same_everywhere(data, "comparing the replicas"):
            raise MPIError(f"the ranks hold different parameters or batches after "
                           f"{self._steps} steps: each rank must start from the same run "
                           "and the MPI library's Allreduce must give every rank the same sum")

    def close(self) -> None:
        """Nothing to stop: the ranks belong to the launcher."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
