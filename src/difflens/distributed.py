"""Data parallelism over ``torch.distributed``, launched by ``torchrun`` (no process pool of ours).

``torchrun --nproc_per_node N -m difflens.cli adl …`` starts N copies of the command.  Each rank
reads the same corpus, keeps its contiguous :func:`shard` of the rows, streams its own
statistics, and the statistics are then merged exactly across ranks (float64 sums by
:func:`all_reduce_sum`, Welford moments and bounded stores by :func:`gather_objects` and the
accumulators' own ``merge`` in rank order, so the result is the single-process one up to float64
rounding).  Rank 0 then does everything else alone — later stages, generation, artifacts, the
report — so no decision depends on the number of processes.

How ranks end (the contract the runners follow):

* non-main ranks write nothing.  Once their share is merged they raise :class:`WorkerDone`
  (``SystemExit(0)``): they do not wait at a barrier for rank 0's later stages, because a
  barrier times out after the process-group timeout and rank 0 may generate for longer than
  that; torchrun waits for every rank anyway.
* every sharded computation goes through :func:`run_shard`: each rank runs its part, then all
  ranks exchange "ok / what failed".  A rank that raised makes rank 0 fail with one line
  (``rank 1 failed: …; rerun the same command to resume``) and the others exit 2 silently; a
  rank that died (killed, out of memory) makes the next collective fail on rank 0 with one line.
  Collectives time out after ``DIFFLENS_DIST_TIMEOUT`` seconds (default 1800), so a hung peer
  never blocks forever.  Finished stages are on disk (rank 0 writes them atomically), so the
  rerun resumes.
* after the last collective, rank 0 calls :func:`end_collectives`: from then on :func:`world`
  is ``(0, 1)`` in that process and engine helpers run unsharded.

Without torchrun's ``WORLD_SIZE`` / ``RANK`` variables nothing here touches
``torch.distributed`` and every helper is the identity: ``world() == (0, 1)``.  Statistics are
merged once per run and live on the CPU in float64, so the process group is gloo on every
machine (CUDA ranks still run their models on ``cuda:LOCAL_RANK``); NCCL would only add copies.

Test hook (documented, tiny): ``DIFFLENS_TEST_FAIL_RANK=R`` makes rank R raise in the middle of
its collection (:func:`fault_point`); with ``DIFFLENS_TEST_FAIL_MODE=exit`` it dies instead
(``os._exit(1)``, no cleanup), as a killed process would.  Only active in distributed runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from difflens.errors import DifflensError

T = TypeVar("T")
log = logging.getLogger(__name__)

ENV_VARS = ("WORLD_SIZE", "RANK")
TIMEOUT_ENV = "DIFFLENS_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
FAIL_RANK_ENV = "DIFFLENS_TEST_FAIL_RANK"
FAIL_MODE_ENV = "DIFFLENS_TEST_FAIL_MODE"
RESUME = "rerun the same command to resume"

_solo = 0  # > 0: this process does no more collectives (see end_collectives)
_failing = False  # a failure is being reported: torchrun's SIGTERM is ignored, no teardown


class WorkerDone(SystemExit):
    """Raised on a non-main rank when its share of the run is merged: rank 0 does the rest
    (and all writing), this rank exits with status 0."""

    def __init__(self) -> None:
        super().__init__(0)


class PeerExit(SystemExit):
    """Ends a non-main rank with status 2 and no message: rank 0 prints the one line."""

    def __init__(self) -> None:
        super().__init__(2)


class Stopped(BaseException):
    """torchrun's SIGTERM on rank 0 after another rank failed.  Not a :class:`DifflensError`,
    so a stage that handles its own errors (e.g. "NMF skipped") cannot take it for one and
    carry on; the CLI prints it as the run's one error line."""


def launched() -> bool:
    """Whether this process was started by torchrun (its ``WORLD_SIZE`` / ``RANK`` are set)."""
    return all(name in os.environ for name in ENV_VARS)


def _group() -> Any:
    """``torch.distributed`` when a process group is up and in use, else None (never imports
    torch: a process that has not imported it has no process group)."""
    if _solo or "torch.distributed" not in sys.modules:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world() -> tuple[int, int]:
    """``(rank, size)`` of the process group, ``(0, 1)`` when there is none."""
    dist = _group()
    return (0, 1) if dist is None else (dist.get_rank(), dist.get_world_size())


def is_main() -> bool:
    """Rank 0 (or no process group): the process that writes artifacts and reports."""
    return world()[0] == 0


def init_from_env() -> bool:
    """Start the process group from torchrun's variables, once; False when not launched.

    gloo with a timeout of ``DIFFLENS_DIST_TIMEOUT`` seconds on every collective; on a CUDA
    machine each rank's current device becomes ``cuda:LOCAL_RANK`` so ``--device cuda`` puts
    rank r's models on its own GPU.
    """
    if not launched():
        return False
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return True
    try:
        timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        raise DifflensError(f"{TIMEOUT_ENV} must be a number of seconds, got "
                            f"{os.environ[TIMEOUT_ENV]!r}") from None
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    try:
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as exc:
        raise DifflensError(f"cannot start the torch.distributed process group "
                            f"({_one_line(exc)}); launch with torchrun") from None
    import atexit
    import signal

    atexit.register(_shutdown)
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def _shutdown() -> None:
    import torch.distributed as dist

    # After a peer's failure the group is broken: tearing it down aborted the process
    # ("terminate called without an active exception") instead of exiting with our status.
    if dist.is_initialized() and not _failing:
        dist.destroy_process_group()


def _on_sigterm(signum: int, frame: Any) -> None:
    """torchrun sends SIGTERM to the survivors when a rank fails: rank 0 says so in one line
    (unless it is already reporting that failure), the others leave quietly."""
    if _failing:
        return
    if _rank_env() == 0:
        raise Stopped(f"stopped by torchrun after another rank failed; {RESUME}")
    raise PeerExit()


def _rank_env() -> int:
    return int(os.environ.get("RANK", 0))


def leave(code: int) -> int:
    """End a torchrun process with ``code`` right away, once its command is over: stdio and log
    handlers are flushed, then ``os._exit``.  Interpreter teardown with a gloo process group
    sometimes aborted the process (SIGABRT, "terminate called without an active exception":
    gloo's threads destroyed during finalisation, whether or not the group was destroyed first),
    which turned a finished rank into a failed run.  Everything a rank writes is final (atomic)
    before this point.  Outside torchrun (or before a group exists) this just returns ``code``."""
    if "torch.distributed" not in sys.modules:
        return code
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return code
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing left to say
            stream.flush()
    logging.shutdown()
    os._exit(code)


def end_collectives() -> None:
    """This process does no more collectives: :func:`world` is ``(0, 1)`` from now on (rank 0
    after the merged stages, so its later stages run unsharded while the others have left)."""
    global _solo
    _solo += 1


def shard_range(n: int, rank: int | None = None, size: int | None = None) -> tuple[int, int]:
    """``[start, stop)`` of this rank's contiguous share of ``n`` rows: sizes differ by at most
    one, the first ``n % size`` ranks take the extra row; concatenated in rank order the shares
    are ``range(n)``."""
    if rank is None or size is None:
        rank, size = world()
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(items: Sequence[T] | Any) -> Any:
    """This rank's contiguous slice of a list or of a tensor's rows (the identity alone)."""
    start, stop = shard_range(len(items))
    return items[start:stop]


def _collective(what: str, fn: Callable[[], T]) -> T:
    """Run a collective; a peer that died or timed out becomes one line on rank 0."""
    try:
        return fn()
    except RuntimeError as exc:  # gloo: connection closed / timeout (DistError subclasses it)
        reason = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", _one_line(exc))
        reason = reason.split(" This is typically")[0]  # gloo's generic advice, not ours
        raise _peer_failure(f"another rank stopped responding during {what} "
                            f"({reason[:160]}); {RESUME}") from None


def _peer_failure(message: str) -> BaseException:
    global _failing
    _failing = True
    if world()[0] == 0:
        return DifflensError(message)
    log.debug("rank %d: %s", world()[0], message)
    return PeerExit()


def all_reduce_sum(tensor: Any) -> Any:
    """The sum over ranks of ``tensor`` (any shape), on the CPU: float64 for floating tensors,
    int64 for integer ones (exact for counts).  The input is left untouched."""
    import torch

    dtype = torch.float64 if tensor.is_floating_point() else torch.int64
    out = tensor.detach().to("cpu", dtype).clone()
    dist = _group()
    if dist is not None and dist.get_world_size() > 1:
        _collective("a sum over ranks", lambda: dist.all_reduce(out))
    return out


def all_gather_rows(tensor: Any) -> Any:
    """Every rank's ``tensor`` (the same shape on every rank) concatenated along dim 0 in rank
    order, on the CPU (a tensor collective, not pickled objects: for per-step exchanges such as
    the data-parallel BatchTopK candidates).  Alone: ``tensor`` on the CPU."""
    import torch

    local = tensor.detach().to("cpu").contiguous()
    dist = _group()
    if dist is None or dist.get_world_size() == 1:
        return local
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    _collective("a gather", lambda: dist.all_gather(parts, local))
    return torch.cat(parts)


def guarded(what: str, fn: Callable[[], T]) -> T:
    """Run ``fn``, which does collectives of its own (e.g. DDP's gradient all-reduce inside a
    backward pass): a peer that died or timed out becomes one line on rank 0, as for the
    helpers here.  Alone, just ``fn()``."""
    return fn() if world()[1] == 1 else _collective(what, fn)


def gather_objects(obj: Any, to_main: bool = False) -> list[Any] | None:
    """Every rank's ``obj`` (picklable), in rank order, on every rank — or on rank 0 only with
    ``to_main`` (the others get None)."""
    dist = _group()
    if dist is None or dist.get_world_size() == 1:
        return [obj]
    size = dist.get_world_size()
    out: list[Any] = [None] * size
    if to_main:
        main = dist.get_rank() == 0
        _collective("a gather", lambda: dist.gather_object(obj, out if main else None, dst=0))
        return out if main else None
    _collective("a gather", lambda: dist.all_gather_object(out, obj))
    return out


def from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a decision made once, e.g. "is this stage finished?")."""
    dist = _group()
    if dist is None or dist.get_world_size() == 1:
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    _collective("a broadcast", lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


def barrier() -> None:
    """Wait for every rank (bounded by the process-group timeout)."""
    dist = _group()
    if dist is not None and dist.get_world_size() > 1:
        _collective("a barrier", dist.barrier)


def run_shard(what: str, fn: Callable[[], T]) -> T:
    """Run this rank's part of a sharded computation, then agree on the outcome.

    Every rank reports ``None`` or the one-line reason it failed; if any failed, rank 0
    raises (its own exception first, else ``rank r failed: …; rerun …``) and the others
    exit 2 quietly.  Alone, this is just ``fn()``.
    """
    rank, size = world()
    if size == 1:
        return fn()
    error: BaseException | None = None
    value: Any = None
    try:
        value = fn()
    except Exception as exc:  # reported to every rank below, then re-raised or summarised
        error = exc
        log.debug("rank %d failed during %s", rank, what, exc_info=True)
    reasons = gather_objects(None if error is None else _one_line(error))
    failed = [(r, reason) for r, reason in enumerate(reasons or []) if reason is not None]
    if not failed:
        return value
    if rank == 0 and error is not None:
        global _failing
        _failing = True
        raise error
    r, reason = failed[0]
    raise _peer_failure(f"rank {r} failed during {what}: {reason}; {RESUME}")


def fault_point() -> None:
    """The test hook (module docstring): rank ``DIFFLENS_TEST_FAIL_RANK`` raises here, or
    dies with ``DIFFLENS_TEST_FAIL_MODE=exit``.  A no-op in single-process runs."""
    target = os.environ.get(FAIL_RANK_ENV)
    rank, size = world()
    if target is None or size == 1 or str(rank) != target.strip():
        return
    if os.environ.get(FAIL_MODE_ENV) == "exit":
        os._exit(1)
    raise RuntimeError(f"injected failure ({FAIL_RANK_ENV}={target})")


def refuse_unsupported(command: str | None, supported: Sequence[str]) -> None:
    """One line when torchrun launched several ranks of a command that would not shard."""
    if launched() and int(os.environ.get("WORLD_SIZE", "1")) > 1 and command not in supported:
        if _rank_env() != 0:
            raise PeerExit()  # rank 0 says it
        raise DifflensError(f"`difflens {command}` does not run data-parallel; run it without "
                            f"torchrun (data-parallel commands: {', '.join(supported)})")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def merged(acc: T, to_main: bool = False) -> T | None:
    """The merge over ranks of a mergeable accumulator (anything with ``merge(other)``: moments,
    covariances, counts, bounded stores): every rank's copy gathered and folded in rank order,
    i.e. corpus order for contiguous shards.  On every rank, or on rank 0 only with ``to_main``
    (the others get None).  Alone: ``acc`` itself."""
    parts = gather_objects(acc, to_main=to_main)
    if parts is None:
        return None
    if len(parts) == 1:
        return acc
    out = parts[0]
    for part in parts[1:]:
        out.merge(part)
    return out
