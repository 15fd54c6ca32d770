"""Data-parallel training over several processes, through PyTorch's own engine.

Two ways in, one code path:
- `train(..., nproc=N)` starts N local workers with torch.distributed's elastic launcher (the
  engine behind `torchrun`); each worker calls the same `train` with the rank in its environment;
- `torchrun ... -m leanvision train ...` on one or several machines: the environment torchrun sets
  (RANK, WORLD_SIZE, MASTER_ADDR, ...) is read the same way.

Semantics. `--batch-size` is the GLOBAL batch: each of the N processes takes its own contiguous
slice of every global batch (batch / N images) from the same seeded data order a single process
would use, and DistributedDataParallel averages the gradients. So `--lr`, the schedule and the
number of steps mean exactly what they mean in one process; with the same flags an N-process run
matches a one-process run up to batch-norm statistics (each process normalises over its own
batch / N images) and augmentation randomness (seeded per process and epoch).

Only rank 0 writes (checkpoints, metrics.jsonl, the artifact, tracking); every rank returns the
same summary. Gloo on CPU, NCCL on CUDA GPUs (one GPU per process)."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError, DistributedError, LeanvisionError
from ..hardware import world_rank_is_main  # noqa: F401  (kept here for callers of this module)
from ..io import write_json

# Long enough for rank 0's end-of-run evaluation while the others wait for its summary; short
# enough that a machine lost from a multi-node job does not hang the rest for torch's 30 min
# default only because the elastic agents missed it. LEANVISION_DIST_TIMEOUT_S overrides.
DEFAULT_TIMEOUT_S = 20 * 60
ERRORS_DIR_ENV = "LEANVISION_DIST_ERRORS"


@dataclass(frozen=True)
class World:
    """This process's place in the job; World() is the single-process case."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def launched() -> bool:
    """True inside a process started by torchrun or by `--nproc` (the launcher sets these)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


@contextmanager
def process_group(device: str = "auto") -> Iterator[World]:
    """Join the job this process was launched into for the block (a no-op in a plain process,
    or when the caller already joined one: then the caller also leaves it)."""
    if not launched() or dist.is_initialized():
        yield world()
        return
    join(device)
    try:
        yield world()
    finally:
        close_process_group()


def join(device: str = "auto") -> World:
    """Join the launched job now if not yet joined (stages reach the fit loop without train();
    the process group then lives until the process ends)."""
    if not launched() or dist.is_initialized():
        return world()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"process {local_rank} on this machine has no GPU of its own (it sees "
                f"{torch.cuda.device_count()}); start at most that many processes per machine "
                "(--nproc / torchrun --nproc-per-node)")
        # "cuda" then means this process's GPU everywhere in the loop.
        torch.cuda.set_device(local_rank)
    timeout = timedelta(seconds=float(os.environ.get("LEANVISION_DIST_TIMEOUT_S",
                                                     DEFAULT_TIMEOUT_S)))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    return world()


def close_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---- launching N local workers ----------------------------------------------------------------


def check_nproc(nproc: int, device: str = "auto", batch_size: int | None = None) -> None:
    """Refuse a process count the hardware cannot give each process a core or a GPU for, or
    that a batch size the user set does not split evenly over."""
    if nproc < 1:
        raise ConfigError(f"--nproc {nproc} must be at least 1")
    if launched() and nproc > 1:
        raise ConfigError("this process was started by torchrun, which already chose the "
                          f"processes; drop --nproc {nproc}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise ConfigError(f"--nproc {nproc} asks for one GPU per process but {gpus} "
                              f"GPU{'s are' if gpus != 1 else ' is'} visible; use --nproc "
                              f"{gpus} or fewer (or --device cpu)")
    elif nproc > usable_cpus():
        raise ConfigError(f"--nproc {nproc} asks for more processes than the {usable_cpus()} "
                          "CPU cores this process may use; each needs a core of its own, so use "
                          f"--nproc {usable_cpus()} or fewer (more machines: torchrun, see "
                          "docs/scaling.md)")
    if batch_size is not None and batch_size % nproc:
        raise ConfigError(f"--batch-size {batch_size} does not split evenly over --nproc "
                          f"{nproc}; use a multiple of {nproc} (the batch size is global)")


def usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def check_port(port: int | None) -> None:
    """A port the user named must be free now; None lets the launcher pick a free one."""
    if port is None:
        return
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a TCP port; use 1024-65535 or leave it unset")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise DistributedError(
                f"port {port} on 127.0.0.1 is in use (another training run?); pass another "
                "--port, or leave --port unset to let leanvision pick a free one") from None


@dataclass
class _Job:
    """What every worker runs: `fn(**kwargs)` from a module-level function (spawn pickles it)."""

    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    nproc: int
    errors_dir: str
    threads: int | None = None
    env: dict[str, str] = field(default_factory=dict)


def launch(fn: Callable[..., Any], kwargs: dict[str, Any], *, nproc: int,
           port: int | None = None, what: str = "training",
           resume_hint: str | None = None) -> Any:
    """Run `fn(**kwargs)` in `nproc` local processes joined into one job; return rank 0's result.

    The elastic agent watches the workers: when one fails or dies, it stops the others (SIGTERM,
    then SIGKILL) instead of leaving them blocked in a collective, and this raises one
    LeanvisionError: the worker's own when it raised one, else DistributedError naming the
    process and the way back (`resume_hint`)."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    check_port(port)
    # Each CPU worker gets its share of the cores: N processes of all-core OpenMP pools would
    # fight over the same cores (torchrun sets OMP_NUM_THREADS=1 for the same reason).
    threads = None if "OMP_NUM_THREADS" in os.environ else max(1, usable_cpus() // nproc)
    with tempfile.TemporaryDirectory(prefix="leanvision-launch-") as scratch:
        errors_dir = Path(scratch) / "errors"
        errors_dir.mkdir()
        config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
            rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{port or 0}",  # 0: a free port
            max_restarts=0, monitor_interval=0.2, start_method="spawn",
            logs_specs=DefaultLogsSpecs(log_dir=str(Path(scratch) / "logs")),
            shutdown_timeout=15)
        job = _Job(fn=fn, kwargs=kwargs, nproc=nproc, errors_dir=str(errors_dir),
                   threads=threads)
        try:
            results = elastic_launch(config, _run_rank)(job)
        except ChildFailedError as exc:
            _raise_worker_error(errors_dir, exc, nproc, what, resume_hint)
        except SignalException:
            # Ctrl-C or a SIGTERM to this process: the agent has stopped the workers.
            raise KeyboardInterrupt from None
    return results[0]


def relaunch(fn: Callable[..., Any], kwargs: dict[str, Any], *, nproc: int,
             settings: dict[str, Any], out: str | Path | None,
             default_out: Callable[[], Path], check_out: Callable[[Path], None],
             what: str) -> Any:
    """Run stage `fn(**kwargs, out=..., **settings)` in `nproc` local processes (the `nproc`
    of prune and distill); rank 0's result. The output folder is named once, here: each worker
    would give a default name its own time stamp. `check_out` refuses an occupied one before
    any process starts."""
    check_nproc(nproc, settings.get("device", "auto"), settings.get("batch_size"))
    out_dir = Path(out) if out is not None else default_out()
    check_out(out_dir)
    return launch(fn, {**kwargs, "out": out_dir, **settings}, nproc=nproc, what=what)


def _run_rank(job: _Job) -> Any:
    """The body of every worker process."""
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    try:
        return job.fn(**job.kwargs)
    except LeanvisionError as exc:
        # The parent re-raises this as is: the user sees the message, not a traceback.
        rank = os.environ.get("RANK", "0")
        write_json(Path(job.errors_dir) / f"rank-{rank}.json",
                   {"kind": type(exc).__name__, "message": str(exc)})
        raise
    finally:
        close_process_group()


def _raise_worker_error(errors_dir: Path, exc: Any, nproc: int, what: str,
                        resume_hint: str | None) -> None:
    import json

    from .. import errors as error_types

    for file in sorted(errors_dir.glob("rank-*.json")):
        record = json.loads(file.read_text())
        kind = getattr(error_types, record["kind"], LeanvisionError)
        if not (isinstance(kind, type) and issubclass(kind, LeanvisionError)):
            kind = LeanvisionError
        raise kind(record["message"]) from None
    failures = sorted(exc.failures.items(), key=lambda item: item[1].timestamp)
    rank, first = failures[0]
    how = (f"was killed by {first.signal_name()}" if first.exitcode < 0
           else f"exited with code {first.exitcode}")
    hint = f"; {resume_hint}" if resume_hint else ""
    raise DistributedError(
        f"{what} process {rank} of {nproc} {how}; the other processes were stopped{hint}"
    ) from None


# ---- inside the fit loop ----------------------------------------------------------------------


def shard(requested: int, batch: int, w: World) -> tuple[int, int, int]:
    """(global batch, lo, hi): this process's [lo, hi) slice of every global batch. `requested`
    is --batch-size, `batch` what the data allows (fewer images than a batch: all of them)."""
    if w.size == 1:
        return batch, 0, batch
    if requested % w.size:
        raise ConfigError(f"--batch-size {requested} does not split evenly over {w.size} "
                          f"processes; use a multiple of {w.size} (the batch size is global)")
    batch = max(w.size, batch - batch % w.size)
    per_process = batch // w.size
    return batch, w.rank * per_process, (w.rank + 1) * per_process


class Replica:
    """The network the training step calls: the model itself in one process, else a
    DistributedDataParallel wrapper. DDP registers the parameters that train when it is built,
    so it is rebuilt when a fine-tuning phase or a model hook changes which ones do."""

    def __init__(self, model: torch.nn.Module, w: World) -> None:
        self.model, self.world = model, w
        self._wrapped: torch.nn.Module | None = None
        self._trainable: tuple[bool, ...] | None = None

    def for_epoch(self) -> torch.nn.Module:
        if self.world.size == 1:
            return self.model
        trainable = tuple(p.requires_grad for p in self.model.parameters())
        if self._wrapped is None or trainable != self._trainable:
            from torch.nn.parallel import DistributedDataParallel

            on_gpu = next(self.model.parameters()).is_cuda
            self._wrapped = DistributedDataParallel(
                self.model, device_ids=[torch.cuda.current_device()] if on_gpu else None)
            self._trainable = trainable
        return self._wrapped


def seed_epoch(seed: int, epoch: int, w: World) -> None:
    """Augmentation and dropout randomness per process, a pure function of (seed, epoch, rank):
    processes must not draw the same crops for different images, and resume needs no state."""
    if w.size > 1:
        torch.manual_seed(seed * 1_000_003 + epoch * 1_009 + w.rank + 1)


def all_finite(loss: torch.Tensor, w: World) -> bool:
    """Every process agrees whether the step's loss is finite, so all stop together."""
    finite = torch.isfinite(loss.detach())
    if w.size == 1:
        return bool(finite)
    flag = finite.to(torch.float32).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def agreed_sums(values: list[float], w: World, device: torch.device) -> list[float]:
    """Sum each value over the processes; every process gets rank 0's copy of the result, so
    decisions made from it (best epoch, early stop, plateau) cannot differ between them."""
    if w.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    dist.broadcast(t, 0)
    return t.tolist()


def sync_buffers(*modules: torch.nn.Module | None) -> None:
    """Batch-norm running statistics (and other buffers) from rank 0 to all: DDP syncs them at
    the start of each forward, so after the last step of an epoch they differ by one update."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for module in modules:
        if module is None:
            continue
        for buffer in module.buffers():
            dist.broadcast(buffer.data, 0)


def validate(fn: Callable[..., tuple[float, float]], net: torch.nn.Module, data: Any,
             w: World, device: torch.device, *args: Any, **kwargs: Any) -> tuple[float, float]:
    """`fn(net, data, *args, **kwargs)` -> (mean loss, top-1) on this process's share of `data`
    (every w.size-th image), combined into the whole set's figures, the same on every process.
    An `extra` per-image tensor (multimodal inputs) is split the same way."""
    if w.size == 1:
        return fn(net, data, *args, **kwargs)
    take = slice(w.rank, None, w.size)
    part = replace(data, images=data.images[take], labels=data.labels[take],
                   kept=data.kept[take])
    if kwargs.get("extra") is not None:
        kwargs["extra"] = kwargs["extra"][take]
    n = len(part.labels)
    loss, top1 = fn(net, part, *args, **kwargs) if n else (0.0, 0.0)
    loss_sum, correct, total = agreed_sums([loss * n, top1 * n, float(n)], w, device)
    return loss_sum / max(total, 1.0), correct / max(total, 1.0)


def share(value: Any, w: World) -> Any:
    """Rank 0's `value` on every process (a summary, a folder name). Others wait for it."""
    if w.size == 1:
        return value
    box = [value if w.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
