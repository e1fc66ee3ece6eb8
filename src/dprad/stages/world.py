"""The processes a run trains on: one, or the ``torchrun`` world (``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` in the environment).

:func:`joined` joins that world for one run and leaves it at the end: it initialises the default process
group (gloo on the CPU, NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``) unless the caller already did, and
destroys only a group it created. Nothing happens at import. Every rank plans the same run from the same
config and data; :meth:`World.check_same` verifies that, and rank 0 alone touches the run directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dprad.errors import DpradError


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes; ``size == 1``: no collective is ever issued."""

    rank: int = 0
    size: int = 1
    backend: str = ""

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run directory."""
        return self.rank == 0

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects; tensors come back on this rank's device)."""
        if not self.distributed:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def raise_if_any(self, error: str | None) -> None:
        """Collective: raise one rank's user error on every rank (instead of leaving the others waiting)."""
        errors = [e for e in self.gather(error) if e]
        if errors:
            raise DpradError(errors[0])

    def check_same(self, what: str, obj: Any) -> None:
        """Collective: refuse to train when the ranks disagree on ``obj`` (their plans, say)."""
        digest = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
        digests = self.gather(digest)
        if len(set(digests)) > 1:
            differ = [r for r, d in enumerate(digests) if d != digests[0]]
            raise DpradError(
                f"torchrun: rank(s) {differ} planned a different {what} than rank 0 (same data, config and "
                "dprad version on every node?)"
            )

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank, as DDP does at construction."""
        if not self.distributed:
            return
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)


SOLO = World()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DpradError(f"environment variable {name}={raw!r} must be an integer") from None


def env_world_size() -> int:
    return _env_int("WORLD_SIZE", 1)


@contextlib.contextmanager
def joined(device: str) -> Iterator[World]:
    """The run's :class:`World`: torchrun's when ``WORLD_SIZE`` > 1 (its process group set up here and
    torn down at the end), else the single process. ``device`` is the run's ``--device``."""
    size = env_world_size()
    if size <= 1:
        yield SOLO
        return
    from dprad.nn.device import resolve_device

    if not dist.is_available():
        raise DpradError(f"WORLD_SIZE={size}: this torch build has no torch.distributed")
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    kind = resolve_device(device)
    with contextlib.ExitStack() as stack:
        if kind.type == "cuda":
            if kind.index is not None:
                raise DpradError(
                    f"--device {device}: under torchrun every rank uses its own GPU (cuda:LOCAL_RANK); "
                    "pass --device cuda or auto"
                )
            if local >= torch.cuda.device_count():
                raise DpradError(
                    f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA device(s) are visible: "
                    "--nproc-per-node must not exceed the GPUs per node"
                )
            stack.enter_context(torch.cuda.device(local))  # "cuda" means cuda:LOCAL_RANK for this run only
        backend = "nccl" if kind.type == "cuda" else "gloo"
        if dist.is_initialized():  # the caller owns a process group: use it, leave it alone
            if dist.get_world_size() != size:
                raise DpradError(f"WORLD_SIZE={size} but the process group has {dist.get_world_size()} ranks")
            yield World(rank=dist.get_rank(), size=size, backend=str(dist.get_backend()))
            return
        dist.init_process_group(backend, rank=rank, world_size=size)  # env://: MASTER_ADDR / MASTER_PORT
        try:
            yield World(rank=rank, size=size, backend=backend)
        finally:
            dist.destroy_process_group()


__all__ = ["SOLO", "World", "env_world_size", "joined"]
