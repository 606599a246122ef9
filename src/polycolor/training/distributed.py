"""The train stage's processes: the torchrun launch for train.nproc > 1, the DDP process group, sums over the
ranks, and a watchdog that takes a process down when the process that started it goes away.

The process tree under `dvc repro` with train.nproc = 2 (nproc = 1 has no launcher and no process group):

    dvc -> python stages/train.py          the launcher: torch.distributed.run, in this process
             -> python stages/train.py     rank 0 (MLflow, checkpoints, outputs)
             -> python stages/train.py     rank 1

Signals: SIGTERM/SIGINT/SIGHUP to the launcher reach the ranks through torchrun (SIGTERM, then SIGKILL after 30 s);
each process also watches its parent (`exit_with_parent`), so an orphaned launcher or rank stops by itself.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from polycolor.errors import PolycolorError

# Shells that DVC may run a stage's command through (`$SHELL -c cmd`); dash does not exec the command, so the
# stage's parent is then the shell and DVC is the grandparent.
SHELLS = {"sh", "dash", "bash", "zsh", "fish", "ksh"}


# ---- launching --------------------------------------------------------------------------------------------------
def in_worker() -> bool:
    """True in a process that torchrun started (it sets TORCHELASTIC_RUN_ID and LOCAL_RANK for every rank)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def torchrun_args(nproc: int, script: str, script_args: list[str]) -> list[str]:
    """torchrun's command line. One node: --standalone (a rendezvous on a free port of this machine). Several nodes:
    no --standalone, and torchrun reads --nnodes, --rdzv-backend, --rdzv-endpoint, --rdzv-id, --node-rank, ... from
    PET_NNODES, PET_RDZV_ENDPOINT, ... in the environment (torch's own convention; docs/scaling.md)."""
    single_node = os.environ.get("PET_NNODES", "1") == "1"
    return ["--nproc-per-node", str(nproc), *(["--standalone"] if single_node else []), script, *script_args]


def launch(nproc: int, script: str, script_args: list[str], device: torch.device) -> None:
    """Run `python script script_args` as `nproc` ranks on this node under torch.distributed.run (torchrun) and
    return when they have all ended; on CUDA, one GPU per rank. A rank that fails has printed its own one-line
    error; this says which."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise PolycolorError(f"train.nproc is {nproc} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    try:
        torchrun.run(torchrun.parse_args(torchrun_args(nproc, script, script_args)))
    except SignalException as e:  # torchrun has passed the signal on to the ranks and waited for them
        raise KeyboardInterrupt(str(e)) from None
    except ChildFailedError as e:
        codes = ", ".join(f"rank {r} exit code {f.exitcode}" for r, f in sorted(e.failures.items()))
        raise PolycolorError(f"distributed training failed ({codes}); the rank's error is printed above") from None


# ---- the process group --------------------------------------------------------------------------------------------
def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """False on every rank but 0: the one switch for logging, MLflow and writing files."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK under torchrun on CUDA, else `device` unchanged."""
    if device.type == "cuda" and in_worker():
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """In a torchrun worker: join the process group (env:// rendezvous from torchrun's MASTER_ADDR/PORT, RANK,
    WORLD_SIZE), nccl on CUDA, gloo on the CPU; leave it on exit. Elsewhere: nothing."""
    if not in_worker():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(local_device(device))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    """nccl reduces CUDA tensors only; gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `t` over the ranks (`t` itself in a single process)."""
    if world_size() == 1:
        return t
    out = t.detach().to(_comm_device(), copy=True)  # a copy: all_reduce works in place, `t` may be the loss
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every rank, as DDP does before each forward: each rank
    updated them from its own share of the last batch, and validation and checkpoints need one model."""
    if world_size() > 1:
        for b in module.buffers():
            dist.broadcast(b, src=0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (a checkpoint read once, so every rank resumes from the same state even when
    the nodes share no filesystem)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def same_on_all_ranks(value: Any, what: str) -> Any:
    """`value`, after checking that every rank holds the same one (a cheap end-of-training check that DDP kept the
    ranks in step); a PolycolorError names each rank's value otherwise."""
    if world_size() == 1:
        return value
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    if len(set(values)) > 1:
        raise PolycolorError(f"the ranks ended with different {what}: {values}")
    return value


def shard(n: int) -> range:
    """This rank's contiguous share of range(n), without padding: every item on exactly one rank."""
    r, w = rank(), world_size()
    return range(n * r // w, n * (r + 1) // w)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


# ---- going down with the parent ------------------------------------------------------------------------------------
def _parent_of(pid: int) -> int | None:
    """The parent pid of `pid` from /proc (Linux), None when the process is gone or /proc is not there."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])  # the comm field may hold spaces and ')'
    except (OSError, ValueError, IndexError):
        return None


def _watched() -> list[tuple[int, int | None]]:
    """(pid, its parent) pairs whose change means our starter is gone: our parent, and when the parent is a
    `sh -c` wrapper, the shell's parent too (DVC under $SHELL=/bin/sh)."""
    ppid = os.getppid()
    pairs: list[tuple[int, int | None]] = [(os.getpid(), ppid)]
    try:
        with open(f"/proc/{ppid}/comm") as f:
            if f.read().strip() in SHELLS:
                pairs.append((ppid, _parent_of(ppid)))
    except OSError:
        pass
    return pairs


@contextmanager
def exit_with_parent(poll_s: float = 0.5) -> Iterator[None]:
    """SIGTERM this process within `poll_s` when the process that started it (DVC, a shell, the torchrun launcher)
    goes away, so training never outlives it: the SIGTERM handler then stops training, keeps the last checkpoint and
    closes the MLflow run as KILLED (a launcher passes the SIGTERM on to its ranks). A thread polling the parent
    rather than prctl(PR_SET_PDEATHSIG), which fires when the parent *thread* exits and cannot see through a shell."""
    watched = _watched()
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(poll_s):
            if os.getppid() != watched[0][1] or any(_parent_of(pid) != parent for pid, parent in watched[1:]):
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
