"""Distributing TOD generation over MPI processes (optional extra ``crab-tod[mpi]``).

A TOD file is a grid ``(n_detectors, n_samples)``.  Under ``mpirun -n N`` the
grid is cut into ``N`` rectangular *tiles*, ``n_blocks_det x n_blocks_time``
(detectors first, since detectors are independent; time blocks only where
there are more ranks than a detector split can feed), one per rank, in the
same way litebird_sim's ``Observation(n_blocks_det=..., n_blocks_time=...)``
lays out its data.

Each rank computes its tile, chunk by chunk (bounded memory), with a *tile
function* ``tile_fn(rows, start_sample, n_samples) -> (len(rows), n_samples)``
and writes it to its own part file, itself a complete CRAB TOD file of that
tile.  When every rank has succeeded, rank 0 writes the output file: the same
layout and attributes as :class:`crab.io.tod.TodWriter` (see ``docs/design.md``),
whose ``/tod`` is an HDF5 *virtual dataset* mapping each tile to its part::

    out.h5                    /tod virtual (n_detectors, n_samples) + root attributes
    out.h5.parts/part-0000.h5 rank 0's tile (a CRAB TOD file; attribute crab_part)
    out.h5.parts/part-0001.h5 ...

HDF5 resolves the parts relative to the folder of ``out.h5``: move or copy the
file together with its ``.parts`` folder.  :func:`consolidate` (``consolidate=True``)
copies the virtual dataset into one self-contained file and removes the parts.

Atomicity: parts are written into a hidden temporary folder; the folder is
renamed to ``out.h5.parts`` and the output file renamed to ``out.h5`` only if
all ranks succeeded (an ``allgather`` of every rank's status).  If any rank
raises, the temporary folder is removed, nothing appears under the final
names, and every rank raises :class:`DistributedError` naming the failing
rank(s) and their exception.  (A rank killed outright, e.g. by the out-of-memory
killer, makes the MPI runtime abort the whole job; hidden ``.tmp`` folders may
then remain, never a file under the final name: the next run that writes the same
output removes them, :func:`crab.core.paths.clean_stale_temporaries`.)

Bitwise reproducibility: with a tile function that is *slice-exact* (a
sample's value depends only on the seed, the detector and the absolute sample
index, never on which other detectors or samples are computed in the same
call, which :mod:`crab.generation.engine` guarantees) the assembled ``/tod`` has the
same bytes as a single-process run with the same seed, whatever the number of
ranks.

The core never needs MPI: without ``mpi4py``, or when not launched by an MPI
runtime, :func:`world` returns ``None`` and :func:`write_distributed` writes
one ordinary file.

Modules: :mod:`~crab.generation.mpi.launch` (is this an MPI run),
:mod:`~crab.generation.mpi.split` (the tiles of the ranks),
:mod:`~crab.generation.mpi.files` (parts, assembly, consolidation),
:mod:`~crab.generation.mpi.distributed` (a generator's run as the MPI file sink).
"""


from crab.generation.mpi.distributed import MpiFileSink, generate_distributed
from crab.generation.mpi.files import (
    CHECKSUM_ATTR,
    PART_ATTR,
    RowDigests,
    TileChunks,
    TileFn,
    consolidate_file,
    file_checksum,
    part_name,
    parts_dir,
    write_distributed,
    write_root_attrs,
)
from crab.generation.mpi.launch import DistributedError, is_root, launcher_size, local_size, require_serial, world
from crab.generation.mpi.split import Tile, plan_tiles, split_grid

__all__ = [
    "CHECKSUM_ATTR",
    "PART_ATTR",
    "DistributedError",
    "MpiFileSink",
    "RowDigests",
    "Tile",
    "TileChunks",
    "TileFn",
    "consolidate_file",
    "file_checksum",
    "generate_distributed",
    "is_root",
    "launcher_size",
    "local_size",
    "part_name",
    "parts_dir",
    "plan_tiles",
    "require_serial",
    "split_grid",
    "world",
    "write_distributed",
    "write_root_attrs",
]
