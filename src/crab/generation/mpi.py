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
then remain, never a file under the final name.)

Bitwise reproducibility: with a tile function that is *slice-exact* (a
sample's value depends only on the seed, the detector and the absolute sample
index, never on which other detectors or samples are computed in the same
call, which :mod:`crab.generation.engine` guarantees) the assembled ``/tod`` has the
same bytes as a single-process run with the same seed, whatever the number of
ranks.

The core never needs MPI: without ``mpi4py``, or when not launched by an MPI
runtime, :func:`world` returns ``None`` and :func:`write_distributed` writes
one ordinary file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import shutil
import traceback
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import h5py
import numpy as np

from crab.io import tod as tod_io
from crab.core.errors import CrabError, InputError
from crab.core.progress import bar

#: ``tile_fn(rows, start_sample, n_samples)``: TOD of detector rows ``rows``
#: (indices into the file's detector list) for samples
#: ``[start_sample, start_sample + n_samples)`` of the file, float32
#: ``(len(rows), n_samples)``.
TileFn = Callable[[np.ndarray, int, int], np.ndarray]

#: ``tile_chunks(rows, start_sample, n_samples, chunk_samples)``: an iterator of
#: ``(first_sample, tod)`` chunks covering ``[start_sample, start_sample + n_samples)``
#: in order (e.g. :meth:`crab.generation.engine.TodGenerator.iter_chunks`); an
#: alternative to ``tile_fn`` that lets the generator keep its worker pool and
#: prefetch across chunks.
TileChunks = Callable[[np.ndarray, int, int, int], Iterator[tuple[int, np.ndarray]]]

#: Environment variables set by MPI launchers (MPICH/Hydra, Intel MPI, Slurm
#: PMI-2: ``PMI_SIZE``; Open MPI: ``OMPI_COMM_WORLD_SIZE``; MVAPICH:
#: ``MV2_COMM_WORLD_SIZE``; PMIx launchers: ``PMIX_RANK``).
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_LAUNCHER_FLAG_VARS = ("PMIX_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK")

PART_ATTR = "crab_part"


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


# --------------------------------------------------------------------------- work split
@dataclass(frozen=True)
class Tile:
    """The part of the ``(n_detectors, n_samples)`` grid computed by one rank.

    Attributes
    ----------
    rank : int
        MPI rank that computes it.
    det_start, det_stop : int
        Detector rows ``[det_start, det_stop)``.
    sample_start, sample_stop : int
        Samples ``[sample_start, sample_stop)`` (relative to the file's sample 0).
    """

    rank: int
    det_start: int
    det_stop: int
    sample_start: int
    sample_stop: int

    @property
    def n_detectors(self) -> int:
        return self.det_stop - self.det_start

    @property
    def n_samples(self) -> int:
        return self.sample_stop - self.sample_start

    @property
    def empty(self) -> bool:
        return self.n_detectors <= 0 or self.n_samples <= 0


def split_grid(n_ranks: int, n_detectors: int, n_samples: int) -> tuple[int, int]:
    """``(n_blocks_det, n_blocks_time)`` with product ``n_ranks``: as many detector blocks as possible.

    The detector split is the largest divisor of ``n_ranks`` not above
    ``n_detectors``; the rest of the ranks split time.
    """
    if n_ranks < 1 or n_detectors < 1 or n_samples < 0:
        raise InputError(f"cannot split {n_detectors} detectors x {n_samples} samples over {n_ranks} ranks")
    n_det_blocks = max(d for d in range(1, min(n_ranks, n_detectors) + 1) if n_ranks % d == 0)
    return n_det_blocks, n_ranks // n_det_blocks


def _even_bounds(n: int, parts: int, align: int = 1) -> list[int]:
    """``parts + 1`` boundaries splitting ``range(n)`` as evenly as possible, inner ones multiples of ``align``."""
    units = -(-n // align) if align > 1 else n
    b = [min(n, (units * i // parts) * align) for i in range(parts + 1)]
    b[-1] = n
    return b


def plan_tiles(n_ranks: int, n_detectors: int, n_samples: int, *, align_samples: int = 1) -> list[Tile]:
    """One :class:`Tile` per rank covering the grid exactly once (some may be empty).

    Rank ``r`` gets detector block ``r // n_blocks_time`` and time block
    ``r % n_blocks_time`` (litebird_sim's order).  Time-block boundaries are
    multiples of ``align_samples`` (e.g. the HDF5 chunk length).
    """
    nbd, nbt = split_grid(n_ranks, n_detectors, n_samples)
    db = _even_bounds(n_detectors, nbd)
    tb = _even_bounds(n_samples, nbt, max(1, int(align_samples)))
    return [Tile(r, db[r // nbt], db[r // nbt + 1], tb[r % nbt], tb[r % nbt + 1]) for r in range(n_ranks)]


# --------------------------------------------------------------------------- files
def parts_dir(path: str | os.PathLike) -> Path:
    """The folder holding the per-rank parts of output ``path`` (``<name>.parts`` beside it)."""
    p = Path(path)
    return p.with_name(p.name + ".parts")


def part_name(rank: int) -> str:
    """File name of rank ``rank``'s part inside :func:`parts_dir`."""
    return f"part-{rank:04d}.h5"


write_root_attrs = tod_io.write_root_attrs  # the single writer of the layout's attributes


def _tile_meta(meta: tod_io.TodMetadata, tile: Tile) -> tod_io.TodMetadata:
    """Metadata of one rank's tile: its detectors and its start time, the rest unchanged."""
    return dataclasses.replace(
        meta,
        detectors=meta.detectors[tile.det_start : tile.det_stop],
        start_time_s=meta.start_time_s + tile.sample_start / meta.sampling_rate_hz,
    )


def _check_block(block: Any, rows: int, n: int) -> np.ndarray:
    arr = np.asarray(block)
    if arr.shape != (rows, n):
        raise InputError(f"tile function returned shape {arr.shape}, expected ({rows}, {n})")
    return arr


def _chunks(tile_fn: TileFn | None, tile_chunks: TileChunks | None, rows: np.ndarray, start: int, n: int, chunk_samples: int) -> Iterator[np.ndarray]:
    """The chunks of rows ``rows``, samples ``[start, start + n)``, in time order, checked."""
    if tile_chunks is not None:
        expect = start
        for c0, block in tile_chunks(rows, start, n, chunk_samples):
            block = np.asarray(block)
            if c0 != expect or block.ndim != 2 or block.shape[0] != len(rows) or block.shape[1] < 1 or c0 + block.shape[1] > start + n:
                raise InputError(f"tile_chunks yielded a chunk of shape {block.shape} at sample {c0}; expected ({len(rows)}, m) at sample {expect}")
            expect = c0 + block.shape[1]
            yield block
        if expect != start + n:
            raise InputError(f"tile_chunks stopped at sample {expect}, expected {start + n}")
        return
    for s in range(start, start + n, chunk_samples):
        m = min(chunk_samples, start + n - s)
        yield _check_block(tile_fn(rows, s, m), len(rows), m)


RowDigests = tod_io.TodChecksum  # per-row digests, combined in detector order


file_checksum = tod_io.file_checksum


CHECKSUM_ATTR = "checksum_sha256"


def _write_tile(
    path: Path,
    meta: tod_io.TodMetadata,
    tile: Tile,
    tile_fn: TileFn | None,
    tile_chunks: TileChunks | None,
    chunk_samples: int,
    n_ranks: int,
    show_progress: bool,
    litebird: dict | None,
) -> list[bytes]:
    rows = np.arange(tile.det_start, tile.det_stop)
    tmeta = _tile_meta(meta, tile)
    digests = RowDigests(len(rows))
    with tod_io.TodWriter(path, tmeta, n_samples=tile.n_samples, chunk_samples=chunk_samples) as w:
        with bar(tile.n_samples, desc=f"rank {tile.rank}/{n_ranks}", unit="sample", disable=None if show_progress else True) as pb:
            for block in _chunks(tile_fn, tile_chunks, rows, tile.sample_start, tile.n_samples, chunk_samples):
                w.write(block)
                digests.update(block)
                pb.update(block.shape[1])
        f = w.dataset.file
        f.attrs[PART_ATTR] = json.dumps({**asdict(tile), "n_ranks": n_ranks})
        if litebird is not None:
            from crab.io.litebird_layout import add_litebird_layout

            add_litebird_layout(f, tmeta, det_idx=list(range(tile.det_start, tile.det_stop)), mpi_rank=tile.rank, mpi_size=n_ranks, global_index=tile.rank, **litebird)
    return digests.digests()


def _write_serial(path, meta, n_samples, tile_fn, tile_chunks, chunk_samples, overwrite, show_progress, litebird, checksum) -> Path:
    rows = np.arange(meta.n_detectors)
    digests = RowDigests(len(rows))
    with tod_io.TodWriter(path, meta, n_samples=n_samples, chunk_samples=chunk_samples, overwrite=overwrite) as w:
        with bar(n_samples, desc="generate", unit="sample", disable=None if show_progress else True) as pb:
            for block in _chunks(tile_fn, tile_chunks, rows, 0, n_samples, chunk_samples):
                w.write(block)
                if checksum:
                    digests.update(block)
                pb.update(block.shape[1])
        if checksum:
            w.dataset.attrs[CHECKSUM_ATTR] = RowDigests.combine(digests.digests())
        if litebird is not None:
            from crab.io.litebird_layout import add_litebird_layout

            add_litebird_layout(w.dataset.file, meta, **litebird)
    return Path(path)


def _describe(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _raise_failures(failures: list[tuple[int, str]], size: int) -> None:
    lines = "; ".join(f"rank {r} of {size} failed: {m}" for r, m in failures)
    raise DistributedError(f"{lines} (no output was written)")


def write_distributed(
    path: str | os.PathLike,
    meta: tod_io.TodMetadata,
    n_samples: int,
    tile_fn: TileFn | None = None,
    *,
    tile_chunks: TileChunks | None = None,
    comm: Any | None = None,
    chunk_samples: int = 1 << 16,
    overwrite: bool = True,
    consolidate: bool = False,
    litebird: dict | None = None,
    checksum: bool = False,
    progress: bool = True,
) -> Path:
    """Write a TOD file, split over the ranks of ``comm`` (or serially when ``comm`` is None or of size 1).

    Parameters
    ----------
    path : path-like
        Output file.  Under MPI, the parts go to :func:`parts_dir` ``(path)``.
    meta : TodMetadata
        Metadata of the whole file (all detectors, start time of sample 0).
    n_samples : int
        Number of samples of the file.
    tile_fn : callable
        ``tile_fn(rows, start_sample, n_samples)`` -> float32 array
        ``(len(rows), n_samples)``: the TOD of detector rows ``rows`` (indices
        into ``meta.detectors``), samples ``[start_sample, start_sample +
        n_samples)`` of the file.  Must be slice-exact for the output not to
        depend on the number of ranks.
    tile_chunks : callable, optional
        Instead of ``tile_fn``: ``tile_chunks(rows, start_sample, n_samples,
        chunk_samples)`` yielding ``(first_sample, tod)`` chunks in order.
    comm : mpi4py communicator, optional
        Default: none (serial).  Use :func:`world` for "MPI if launched so".
        Every rank of ``comm`` must call this function with the same arguments.
    chunk_samples : int
        Samples computed and written per call of ``tile_fn`` (memory per rank is
        about ``4 * detectors_per_rank * chunk_samples`` bytes plus the generator's own).
    overwrite : bool
        Replace an existing output (and its parts folder).
    consolidate : bool
        Under MPI, copy the assembled file into one self-contained file and
        delete the parts (rank 0 copies, in chunks; doubles the I/O).
    litebird : dict, optional
        Also make the output (and each part, as one observation per rank)
        readable by ``litebird_sim.read_list_of_observations``: keyword
        arguments of :func:`crab.io.litebird_layout.add_litebird_layout` (``{}`` for the defaults).
    checksum : bool
        Store the :class:`RowDigests` checksum (same value as
        :class:`crab.generation.engine.Checksum`) as the ``/tod`` attribute
        ``checksum_sha256``.  Computed while writing when every tile holds
        whole rows; with a time split rank 0 reads the assembled file once.
    progress : bool
        Progress bar on rank 0 (see :mod:`crab.core.progress`).

    Returns
    -------
    Path
        ``path``, on every rank.

    Raises
    ------
    DistributedError
        On every rank, if any rank failed; the message names each failing rank
        and its exception.  Nothing is left under the final names.
    """
    path = Path(path)
    n_samples = int(n_samples)
    chunk_samples = int(chunk_samples)
    if n_samples < 1:
        raise InputError(f"number of samples must be at least 1, got {n_samples}")
    if chunk_samples < 1:
        raise InputError(f"chunk_samples must be at least 1, got {chunk_samples}")
    if (tile_fn is None) == (tile_chunks is None):
        raise InputError("give exactly one of tile_fn and tile_chunks")
    if comm is None or comm.Get_size() == 1:
        if not overwrite and path.exists():
            raise InputError(f"output file {path} exists (pass overwrite to replace it)")
        return _write_serial(path, meta, n_samples, tile_fn, tile_chunks, chunk_samples, overwrite, progress, litebird, checksum)

    rank, size = comm.Get_rank(), comm.Get_size()
    final_parts = parts_dir(path)

    # ---- set-up on rank 0: checks and the temporary parts folder
    setup: tuple[str | None, str | None] = (None, None)
    if rank == 0:
        try:
            if not path.parent.is_dir():
                raise InputError(f"output folder {path.parent} does not exist")
            if not overwrite and (path.exists() or final_parts.exists()):
                raise InputError(f"output file {path} exists (pass overwrite to replace it)")
            tmp = path.with_name(f".{path.name}.parts.tmp-{uuid.uuid4().hex[:12]}")
            tmp.mkdir()
            setup = (str(tmp), None)
        except Exception as exc:  # noqa: BLE001 - reported to every rank
            setup = (None, _describe(exc))
    tmp_s, err = comm.bcast(setup, root=0)
    if err is not None:
        _raise_failures([(0, err)], size)
    tmp_parts = Path(tmp_s)

    # ---- every rank writes its tile
    tiles = plan_tiles(size, meta.n_detectors, n_samples, align_samples=chunk_samples)
    tile = tiles[rank]
    status: str | None = None
    digests: list[bytes] = []
    try:
        if not tile.empty:
            digests = _write_tile(tmp_parts / part_name(rank), meta, tile, tile_fn, tile_chunks, chunk_samples, size, progress and rank == 0, litebird)
    except Exception as exc:  # noqa: BLE001 - reported to every rank
        status = _describe(exc)
        if os.environ.get("CRAB_DEBUG"):
            traceback.print_exc()
    gathered = comm.gather(digests if checksum else None, root=0)
    statuses = comm.allgather(status)
    failures = [(r, s) for r, s in enumerate(statuses) if s is not None]
    if failures:
        if rank == 0:
            shutil.rmtree(tmp_parts, ignore_errors=True)
        comm.Barrier()
        _raise_failures(failures, size)

    # ---- rank 0 assembles and renames into place
    final_status: str | None = None
    if rank == 0:
        try:
            whole_rows = checksum and all(t.empty or (t.sample_start == 0 and t.sample_stop == n_samples) for t in tiles)
            digest = None
            if whole_rows:
                rows = [b"" for _ in range(meta.n_detectors)]
                for t, dg in zip(tiles, gathered):
                    if not t.empty:
                        rows[t.det_start : t.det_stop] = dg
                digest = RowDigests.combine(rows)
            _assemble(path, meta, n_samples, tiles, tmp_parts, final_parts, litebird, digest, checksum and not whole_rows)
        except Exception as exc:  # noqa: BLE001 - reported to every rank
            final_status = _describe(exc)
            shutil.rmtree(tmp_parts, ignore_errors=True)
        if final_status is None and consolidate:
            try:
                consolidate_file(path)
            except Exception as exc:  # noqa: BLE001 - no half-made output under the final name
                final_status = _describe(exc)
                path.unlink(missing_ok=True)
                shutil.rmtree(final_parts, ignore_errors=True)
    final_status = comm.bcast(final_status, root=0)
    if final_status is not None:
        _raise_failures([(0, f"assembling {path}: {final_status}")], size)
    return path


def _assemble(
    path: Path,
    meta: tod_io.TodMetadata,
    n_samples: int,
    tiles: Sequence[Tile],
    tmp_parts: Path,
    final_parts: Path,
    litebird: dict | None,
    digest: str | None = None,
    read_checksum: bool = False,
) -> None:
    """Rank 0: write the virtual-dataset file, then rename parts folder and file into place."""
    layout = h5py.VirtualLayout(shape=(meta.n_detectors, n_samples), dtype=np.float32)
    for t in tiles:
        if t.empty:
            continue
        src = h5py.VirtualSource(f"{final_parts.name}/{part_name(t.rank)}", "tod", shape=(t.n_detectors, t.n_samples), dtype=np.float32)
        layout[t.det_start : t.det_stop, t.sample_start : t.sample_stop] = src
    tmp_file = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    trash: Path | None = None
    try:
        with h5py.File(tmp_file, "w") as f:
            # NaN where a part is missing: crab.io.tod.read_tod rejects NaN, so a lost part never reads as zeros
            f.create_virtual_dataset("tod", layout, fillvalue=np.float32(np.nan))
            write_root_attrs(f, meta)
            f.attrs["crab_parts"] = json.dumps({"folder": final_parts.name, "n_ranks": len(tiles), "tiles": [asdict(t) for t in tiles if not t.empty]})
            if litebird is not None:
                from crab.io.litebird_layout import add_litebird_layout

                add_litebird_layout(f, meta, **litebird)
        if read_checksum:  # tiles split in time: hash the assembled file (parts still in the temporary folder)
            digest = _virtual_checksum(tmp_parts, tiles, meta.n_detectors)
        if digest is not None:
            with h5py.File(tmp_file, "r+") as f:
                f["tod"].attrs[CHECKSUM_ATTR] = digest
        if final_parts.exists():
            trash = final_parts.with_name(f".{final_parts.name}.old-{uuid.uuid4().hex[:8]}")
            final_parts.rename(trash)
        tmp_parts.rename(final_parts)
        os.replace(tmp_file, path)
    except BaseException:
        tmp_file.unlink(missing_ok=True)
        if trash is not None and not final_parts.exists():
            trash.rename(final_parts)  # put the previous output's parts back
            trash = None
        raise
    finally:
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def _virtual_checksum(parts: Path, tiles: Sequence[Tile], n_det: int, chunk_bytes: int = 1 << 26) -> str:
    """Checksum of the grid from the part files (rank 0, when tiles split time): rows in time order, bounded memory."""
    digests: list[bytes] = [b""] * n_det
    blocks = sorted({(t.det_start, t.det_stop) for t in tiles if not t.empty})
    for d0, d1 in blocks:
        d = RowDigests(d1 - d0)
        step = max(1, chunk_bytes // (4 * (d1 - d0)))
        for t in sorted((t for t in tiles if not t.empty and t.det_start == d0), key=lambda t: t.sample_start):
            with h5py.File(parts / part_name(t.rank), "r") as f:
                ds = f["tod"]
                for s0 in range(0, t.n_samples, step):
                    d.update(ds[:, s0 : s0 + step])
        digests[d0:d1] = d.digests()
    return RowDigests.combine(digests)


def consolidate_file(path: str | os.PathLike, *, chunk_samples: int = 1 << 16) -> Path:
    """Replace a file assembled from parts by one self-contained file with the same content; delete the parts.

    Serial (call it on one rank).  Copies attributes and ``/tod`` in chunks of
    time (bounded memory); any extra datasets (litebird_sim layout) are copied too.
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with h5py.File(p, "r") as src, h5py.File(tmp, "w") as dst:
            ds = src["tod"]
            n_det, n = ds.shape
            out = dst.create_dataset("tod", shape=ds.shape, dtype=np.float32, chunks=(1, int(max(1, min(chunk_samples, n)))))
            for s in range(0, n, chunk_samples):
                block = ds[:, s : s + chunk_samples]
                if not np.all(np.isfinite(block)):
                    raise tod_io.FileFormatError(f"{p}: parts missing or unreadable (NaN in the assembled TOD near sample {s})")
                out[:, s : s + block.shape[1]] = block
            for k, v in ds.attrs.items():
                out.attrs[k] = v
            for k, v in src.attrs.items():
                if k != "crab_parts":
                    dst.attrs[k] = v
            for name in src:
                if name != "tod":
                    src.copy(src[name], dst, name=name)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    shutil.rmtree(parts_dir(p), ignore_errors=True)
    return p


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


def generate_distributed(
    gen: Any,
    path: str | os.PathLike,
    meta: tod_io.TodMetadata,
    detectors: int | Sequence[int],
    start_sample: int,
    n_samples: int,
    *,
    comm: Any | None = None,
    chunk_samples: int = 1 << 18,
    overwrite: bool = False,
    progress: bool | None = None,
    consolidate: bool = False,
    litebird: dict | None = None,
) -> Any:
    """Generate with a :class:`crab.generation.engine.TodGenerator` into ``path``, split over ``comm``.

    The MPI branch of :func:`crab.generation.engine.generate_to_file`: same file
    (``/tod`` bytes, attributes and ``checksum_sha256``) as a single-process
    run, assembled from per-rank parts (see the module docstring).

    Parameters
    ----------
    gen : TodGenerator
        The generator (its ``n_workers`` is lowered to the cores per rank when
        several ranks share a node; that never changes the output).
    path, meta
        Output file and its metadata (all detectors; ``meta.start_time_s`` is
        the time of ``start_sample``).
    detectors : int or sequence of int
        What ``TodGenerator`` takes: a count (keys ``0..n-1``) or the keys.
    start_sample, n_samples : int
        Absolute first sample and number of samples.
    comm : mpi4py communicator, optional
        Default :func:`world` (serial when not launched by MPI).

    Returns
    -------
    crab.generation.engine.GenerationStats
        On every rank; ``wall_s`` from the first rank's start to the last
        rank's end, ``samples_per_s`` of the whole job, ``peak_rss_mb`` the
        largest over ranks.
    """
    from crab.generation.engine import GenerationStats, peak_rss_mb  # noqa: PLC0415 - generation is optional here

    comm = world() if comm is None else comm
    keys = list(range(int(detectors))) if isinstance(detectors, (int, np.integer)) else [int(d) for d in detectors]
    if len(keys) != meta.n_detectors:
        raise InputError(f"{len(keys)} detector keys for {meta.n_detectors} detector names")
    start_sample = int(start_sample)
    if comm is not None and comm.Get_size() > 1:
        try:
            cap = max(1, len(os.sched_getaffinity(0)) // local_size(comm))
        except AttributeError:  # pragma: no cover
            cap = max(1, (os.cpu_count() or 1) // local_size(comm))
        if getattr(gen, "n_workers", 1) > cap:
            gen.n_workers = cap

    def tile_chunks(rows: np.ndarray, s: int, n: int, c: int) -> Iterator[tuple[int, np.ndarray]]:
        for c0, chunk in gen.iter_chunks([keys[r] for r in rows], start_sample + s, n, c):
            yield c0 - start_sample, chunk

    if comm is not None:
        comm.Barrier()
    t0 = time.perf_counter()
    write_distributed(
        path, meta, n_samples, tile_chunks=tile_chunks, comm=comm, chunk_samples=chunk_samples, overwrite=overwrite,
        consolidate=consolidate, litebird=litebird, checksum=True, progress=progress is not False,
    )
    wall = time.perf_counter() - t0
    rss = peak_rss_mb()
    checksum = None
    if comm is None or comm.Get_rank() == 0:
        with h5py.File(path, "r") as f:
            checksum = str(f["tod"].attrs[CHECKSUM_ATTR])
    if comm is not None and comm.Get_size() > 1:
        from mpi4py import MPI

        wall = comm.allreduce(wall, op=MPI.MAX)
        rss = comm.allreduce(rss, op=MPI.MAX)
        checksum = comm.bcast(checksum, root=0)
    total = len(keys) * int(n_samples)
    return GenerationStats(
        n_detectors=len(keys),
        start_sample=start_sample,
        n_samples=int(n_samples),
        sampling_rate_hz=float(meta.sampling_rate_hz),
        wall_s=wall,
        samples_per_s=total / wall if wall > 0 else float("inf"),
        checksum=checksum,
        path=Path(path),
        peak_rss_mb=rss,
        settings={**gen.describe(), "mpi_ranks": 1 if comm is None else comm.Get_size()},
    )


def require_serial(what: str) -> None:
    """Raise if launched with several MPI ranks: ``what`` (e.g. ``"--checksum-only"``) is not distributed."""
    comm = world()
    if comm is not None:
        raise CrabError(f"{what} is not distributed over MPI ranks (each of the {comm.Get_size()} ranks would do all the work): run it without mpirun")


def is_root() -> bool:
    """True on rank 0 of :func:`world` (or when not under MPI): print summaries only there."""
    comm = world()
    return comm is None or comm.Get_rank() == 0
