"""Writing one TOD file from per-rank parts: the parts, the virtual-dataset file, consolidation.

See :mod:`crab.generation.mpi` for the layout and the atomicity guarantees.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import h5py
import numpy as np

from crab.core.errors import InputError
from crab.core.paths import check_output_file, clean_stale_temporaries, temporary_path
from crab.core.progress import bar
from crab.generation.mpi.launch import DistributedError
from crab.generation.mpi.split import Tile, plan_tiles
from crab.io import tod as tod_io

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

PART_ATTR = "crab_part"


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


def _write_serial(path, meta, n_samples, tile_fn, tile_chunks, chunk_samples, overwrite, show_progress, litebird, checksum, finish_file=None) -> Path:
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
        if finish_file is not None:
            finish_file(w.dataset.file)
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
    finish_file: Callable[[h5py.File], None] | None = None,
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
        :class:`crab.io.tod.TodChecksum`) as the ``/tod`` attribute
        ``checksum_sha256``.  Computed while writing when every tile holds
        whole rows; with a time split rank 0 reads the assembled file once.
    progress : bool
        Progress bar on rank 0 (see :mod:`crab.core.progress`).
    finish_file : callable, optional
        ``finish_file(h5py.File)``: called by rank 0 on the assembled file before it is renamed into
        place (e.g. to add the ``/events`` table).

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
        check_output_file(path, overwrite=overwrite, option="overwrite")
        return _write_serial(path, meta, n_samples, tile_fn, tile_chunks, chunk_samples, overwrite, progress, litebird, checksum, finish_file)

    rank, size = comm.Get_rank(), comm.Get_size()
    final_parts = parts_dir(path)

    # ---- set-up on rank 0: checks and the temporary parts folder
    setup: tuple[str | None, str | None] = (None, None)
    if rank == 0:
        try:
            check_output_file(path, overwrite=overwrite, option="overwrite")
            if not overwrite and final_parts.exists():
                raise InputError(f"output parts {final_parts} exist (use overwrite to replace them)")
            clean_stale_temporaries(final_parts.parent, final_parts.name)
            tmp = temporary_path(final_parts)
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
            _assemble(path, meta, n_samples, tiles, tmp_parts, final_parts, litebird, digest, checksum and not whole_rows, finish_file)
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
    finish_file: Callable[[h5py.File], None] | None = None,
) -> None:
    """Rank 0: write the virtual-dataset file, then rename parts folder and file into place."""
    layout = h5py.VirtualLayout(shape=(meta.n_detectors, n_samples), dtype=np.float32)
    for t in tiles:
        if t.empty:
            continue
        src = h5py.VirtualSource(f"{final_parts.name}/{part_name(t.rank)}", "tod", shape=(t.n_detectors, t.n_samples), dtype=np.float32)
        layout[t.det_start : t.det_stop, t.sample_start : t.sample_stop] = src
    tmp_file = temporary_path(path)
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
            if finish_file is not None:
                finish_file(f)
        if read_checksum:  # tiles split in time: hash the assembled file (parts still in the temporary folder)
            digest = _virtual_checksum(tmp_parts, tiles, meta.n_detectors)
        if digest is not None:
            with h5py.File(tmp_file, "r+") as f:
                f["tod"].attrs[CHECKSUM_ATTR] = digest
        if final_parts.exists():
            trash = temporary_path(final_parts)
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
    tmp = temporary_path(p)
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
