"""Data-parallel glue on ``torch.distributed``: one process per device, started by ``torchrun`` (or ``accelerate
launch``, which calls torchrun), no scheduler of our own.

What it gives the rest of taskprune:

- :func:`init_from_env` joins the job that ``torchrun`` describes in its environment variables (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): gloo on CPUs, NCCL for CUDA tensors
  (``cpu:gloo,cuda:nccl``). Without those variables it does nothing and everything runs in one process.
- :class:`Shard`: this process's rank among ``world_size``; scorers take the batches it :meth:`~Shard.owns`.
- :func:`all_reduce_sum`: every score is a sum over examples, so summing the ranks' partial sums gives the
  one-process result up to float rounding (one collective for all groups).
- :func:`claim_error_report`: the first process of a failing job to ask wins the right to print the job's one
  ``taskprune: error:`` line (an atomic counter in the launcher's key-value store); the others stay silent.
- :class:`Stopped`: raised in a process that the launcher terminates because another one failed.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import torch

from ..errors import TaskpruneError, library_message

#: a collective may wait this long for a slower rank (a sweep's ranks finish hours apart); a rank that DIES is
#: noticed at once: torchrun stops the others, and gloo/NCCL fail the pending collective
COLLECTIVE_TIMEOUT = timedelta(hours=24)
_ERROR_KEY = "taskprune/error-reports"
_joined = False  # this process joined a job (init_from_env): it ends through leave_process


@dataclass(frozen=True)
class Shard:
    """Which part of the work this process does: batch ``i`` belongs to rank ``i % world_size`` (batches are
    length-ordered, so striding gives every rank a similar mix of short and long inputs)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """True when the work is split (more than one process)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes outputs and prints."""
        return self.rank == 0

    def owns(self, index: int) -> bool:
        return index % self.world_size == self.rank

    def owned(self, n: int) -> list[int]:
        """The indices of ``n`` items (batches, runs) that this rank takes."""
        return list(range(self.rank, n, self.world_size))

    def examples_per_rank(self, n_examples: int, batch_size: int) -> list[int]:
        """How many of ``n_examples`` (cut into batches of ``batch_size``) each rank scores."""
        counts = [0] * self.world_size
        for i, start in enumerate(range(0, n_examples, batch_size)):
            counts[i % self.world_size] += min(batch_size, n_examples - start)
        return counts

    def tag(self) -> str:
        """``rank 1 of 2: `` in a job of several processes, nothing otherwise (prefix of messages)."""
        return f"rank {self.rank} of {self.world_size}: " if self.active else ""


SINGLE = Shard()


class Stopped(BaseException):
    """The launcher sent SIGTERM: another process of the job failed. A BaseException, like KeyboardInterrupt, so
    no ``except Exception`` on the way swallows it; atomic writers still clean their temp files up."""


class PeerLost(RuntimeError):
    """A collective failed: another process of the job stopped (killed, crashed, or refused its input)."""


def launched_world_size() -> int:
    """How many processes the launcher started (1 when not under torchrun / accelerate launch)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def launched_rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def current() -> Shard:
    """This process's place in the job (:data:`SINGLE` when no process group is initialised)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Shard(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def backend() -> str:
    """gloo for CPU tensors (every collective of scores), NCCL too where CUDA is there (SMP gradients on GPUs)."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_from_env() -> Shard:
    """Join the job described by torchrun's environment variables; :data:`SINGLE` when there is none (or one
    process). Installs a SIGTERM handler that raises :class:`Stopped`, so a process stopped by the launcher says so
    in at most one line and removes its temp files."""
    import torch.distributed as dist

    if launched_world_size() == 1:
        return SINGLE
    if not dist.is_initialized():
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise TaskpruneError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start "
                                 "several processes with torchrun (or accelerate launch), which sets them all")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local % torch.cuda.device_count())
        try:
            dist.init_process_group(backend(), timeout=COLLECTIVE_TIMEOUT)
        except (RuntimeError, ValueError) as err:
            raise PeerLost(f"cannot join the job: {library_message(err)}") from None
    global _joined
    _joined = True
    signal.signal(signal.SIGTERM, _on_sigterm)
    return current()


def joined() -> bool:
    """True once this process has joined a job of several processes (even after leaving its process group)."""
    return _joined


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise Stopped("stopped by the launcher: another process of this job failed")


def quiet_sigterm(ignore: bool = False) -> None:
    """From now on the launcher's SIGTERM ends this process silently (``ignore``: not at all, while it prints its
    error line): its one line is printed or left to another rank, and no second message may follow."""
    if launched_world_size() > 1:
        signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore else signal.SIG_DFL)


def finish(exit_code: int | None = None) -> None:
    """Leave a job that succeeded: wait until every rank is done, then leave the process group; with ``exit_code``,
    end the process too (:func:`leave_process`: what a torchrun script should do last). Tearing gloo down while a
    peer still talks to it can abort the process (seen once under heavy load: SIGABRT, "terminate called without an
    active exception"); the barrier makes every rank leave together."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        barrier()
    shutdown()
    if exit_code is not None:
        leave_process(exit_code)


def leave_process(code: int) -> NoReturn:
    """End a process of a multi-process job now, without the interpreter's finalisation: a library thread (gloo's
    workers, an intra-op pool) that still drops a tensor owned by Python asks for the GIL while the interpreter is
    torn down, and CPython then ends that thread with ``pthread_exit``, whose forced unwind through C++ aborts the
    process: SIGABRT, "terminate called without an active exception", after a job that had succeeded (seen on a
    loaded CI machine, rank 1 of an ``accelerate launch`` job, 2026-12-04). The exit handlers (temp folders) run
    first and the output is flushed, so nothing of the job is lost; one process alone exits normally."""
    import atexit

    try:
        atexit._run_exitfuncs()  # noqa: SLF001 - what the interpreter would run at exit, run while it is whole
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said on it
                pass
        os._exit(code)


def shutdown() -> None:
    """Leave the job at once (after a failure: no collective, the peers may be gone)."""
    import torch.distributed as dist

    quiet_sigterm()
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - leaving a broken job must not turn into a second error line
            pass


def device_for(shard: Shard) -> torch.device:
    """Where a rank runs its (not dispatched) model: its own GPU when there are GPUs, else the CPU."""
    if shard.active and torch.cuda.is_available():
        return torch.device("cuda", shard.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _collective(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a collective; a peer that has gone away is a :class:`PeerLost` (one line), not a backend traceback."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as err:
        raise PeerLost(f"another process of this job stopped (killed, crashed or failed): {_gist(err)}") from None


def _gist(err: Exception) -> str:
    """The backend's message without its source location and advice: ``Connection closed by peer [addr]:port``."""
    import re

    first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
    first = re.sub(r"^\[[^\]]*\]\s*", "", first)  # "[.../gloo/transport/tcp/pair.cc:553] "
    return first.split(". ")[0].rstrip(".")


def all_reduce_sum(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum every rank's tensors (same names, same shapes on every rank) in ONE collective; every rank gets the sum.

    The tensors are flattened into one float64 buffer, so rounding does not depend on the number of groups; the
    result comes back in each tensor's own dtype and device.
    """
    import torch.distributed as dist

    names = sorted(scores)
    if not names:
        return {}
    flat = torch.cat([scores[n].detach().reshape(-1).to("cpu", torch.float64) for n in names])
    _collective(dist.all_reduce, flat, op=dist.ReduceOp.SUM)
    out, start = {}, 0
    for n in names:
        t = scores[n]
        out[n] = flat[start : start + t.numel()].reshape(t.shape).to(t.device, t.dtype)
        start += t.numel()
    return out


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average gradients in place across ranks (what DDP does after ``backward``), in one collective."""
    import torch.distributed as dist

    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    _collective(dist.all_reduce, flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    start = 0
    for t in tensors:
        t.copy_(flat[start : start + t.numel()].reshape(t.shape))
        start += t.numel()


def broadcast_(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Every rank takes rank ``src``'s values (in place)."""
    import torch.distributed as dist

    for t in tensors:
        _collective(dist.broadcast, t, src=src)


def sum_ints(values: list[int]) -> list[int]:
    """Element-wise sum of a few integers over the ranks (e.g. runs done and failed)."""
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.int64)
    _collective(dist.all_reduce, t, op=dist.ReduceOp.SUM)
    return [int(v) for v in t]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    _collective(dist.all_gather_object, out, obj)
    return out


def barrier() -> None:
    import torch.distributed as dist

    _collective(dist.barrier)


def claim_error_report() -> bool:
    """True for the one process of a failing job that prints the error line (always True in one process).

    The first rank to ask increments a counter in the store the launcher hosts (it outlives the workers); a rank
    that cannot reach it prints anyway (two lines are better than none).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return launched_world_size() == 1 or launched_rank() == 0  # before joining: errors are alike on all ranks
    try:
        store = dist.distributed_c10d._get_default_store()
        return int(store.add(_ERROR_KEY, 1)) == 1
    except Exception:  # noqa: BLE001 - no store, no claim: say it
        return True
