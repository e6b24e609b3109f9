"""Launch detection: whether this process runs under an MPI launcher with several ranks.

The core never needs MPI: without ``mpi4py``, or when not launched by an MPI
runtime, :func:`world` returns ``None`` and every writer works serially.
"""

from __future__ import annotations

import os
from typing import Any

from crab.core.errors import CrabError

#: Environment variables set by MPI launchers (MPICH/Hydra, Intel MPI, Slurm
#: PMI-2: ``PMI_SIZE``; Open MPI: ``OMPI_COMM_WORLD_SIZE``; MVAPICH:
#: ``MV2_COMM_WORLD_SIZE``; PMIx launchers: ``PMIX_RANK``).
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_LAUNCHER_FLAG_VARS = ("PMIX_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK")


class DistributedError(CrabError):
    """One or more MPI ranks failed; the message names them and their exceptions."""


# --------------------------------------------------------------------------- launch
def launcher_size() -> int | None:
    """Number of processes the MPI launcher started, from its environment, or ``None``.

    ``CRAB_MPI=0`` forces serial mode (returns ``None``); ``CRAB_MPI=1`` forces
    MPI (returns ``0``: size unknown until ``mpi4py`` is imported).
    """
    force = os.environ.get("CRAB_MPI", "").strip().lower()
    if force in ("0", "no", "false", "off"):
        return None
    for var in _LAUNCHER_SIZE_VARS:
        v = os.environ.get(var)
        if v:
            try:
                return int(v)
            except ValueError:
                pass
    if force in ("1", "yes", "true", "on") or any(os.environ.get(v) for v in _LAUNCHER_FLAG_VARS):
        return 0
    return None


def world() -> Any | None:
    """``mpi4py.MPI.COMM_WORLD`` when launched by ``mpirun``/``srun`` with several processes, else ``None``.

    ``mpi4py`` is imported only in that case, so serial runs never initialise MPI.

    Raises
    ------
    CrabError
        Launched with several MPI processes but ``mpi4py`` is not installed
        (each process would otherwise write the whole output on its own).
    """
    size = launcher_size()
    if size is None or size == 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise CrabError(
            f"launched by an MPI runtime with {size or 'several'} processes, but mpi4py is not installed: "
            "install the extra with `pip install 'crab-tod[mpi]'` (or run without mpirun; CRAB_MPI=0 forces serial mode)"
        ) from None
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def local_size(comm: Any) -> int:
    """Number of ranks of ``comm`` on this node (1 if unknown)."""
    try:
        from mpi4py import MPI

        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            return int(node.Get_size())
        finally:
            node.Free()
    except Exception:  # noqa: BLE001 - any failure: assume one rank per node
        return 1


def require_serial(what: str) -> None:
    """Raise if launched with several MPI ranks: ``what`` (e.g. ``"--checksum-only"``) is not distributed."""
    comm = world()
    if comm is not None:
        raise CrabError(f"{what} is not distributed over MPI ranks (each of the {comm.Get_size()} ranks would do all the work): run it without mpirun")


def is_root() -> bool:
    """True on rank 0 of :func:`world` (or when not under MPI): print summaries only there."""
    comm = world()
    return comm is None or comm.Get_rank() == 0
