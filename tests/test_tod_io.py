"""The HDF5 TOD format: round trip, atomic writes, validation of what is read."""

import json

import h5py
import numpy as np
import pytest

from crab.core.errors import FileFormatError, InputError
from crab.io.tod import (
    TodMetadata,
    TodWriter,
    iter_tod_chunks,
    read_metadata,
    read_tod,
    write_tod,
)
from crab.physics.events import EVENT_KIND_DIRECT, EVENT_KIND_WAFER, EventTable, default_detector_names


def _meta(n=2, **kw):
    return TodMetadata(sampling_rate_hz=19.0, detectors=default_detector_names(n), config={"phi_gv": 0.6}, seed=3, **kw)


def _events():
    return EventTable(
        time_s=[0.5, 1.0, 2.0],
        detector=[0, -1, 1],
        charge_z=[1, 2, 8],
        energy_kev=[10.0, 200.0, 3000.0],
        kind=[EVENT_KIND_DIRECT, EVENT_KIND_WAFER, EVENT_KIND_DIRECT],
    )


def test_round_trip_with_events(tmp_path):
    tod = np.random.default_rng(0).normal(size=(2, 1000)).astype(np.float32)
    path = write_tod(tmp_path / "a.h5", tod, _meta(start_time_s=100.0), _events())
    f = read_tod(path)
    assert np.array_equal(f.tod, tod)
    assert f.meta.sampling_rate_hz == 19.0 and f.meta.start_time_s == 100.0
    assert f.meta.detectors == ["W00_D000", "W00_D001"]
    assert f.meta.config == {"phi_gv": 0.6} and f.meta.seed == 3
    assert f.events.count_by_kind() == {"direct": 2, "wafer": 1}
    assert np.array_equal(f.events.detector, [0, -1, 1])
    with h5py.File(path) as h:  # litebird_sim-style attribute names are present too
        assert h.attrs["start_time"] == 100.0
        assert json.loads(h.attrs["detectors"]) == f.meta.detectors
    meta, n = read_metadata(path)
    assert n == 1000 and meta.n_detectors == 2
    assert f.duration_s == pytest.approx(1000 / 19.0)


def test_streaming_writer_equals_one_go_and_slicing(tmp_path):
    tod = np.arange(2 * 1000, dtype=np.float32).reshape(2, 1000)
    with TodWriter(tmp_path / "s.h5", _meta(), chunk_samples=64) as w:
        for s in range(0, 1000, 333):
            w.write(tod[:, s : s + 333])
    f = read_tod(tmp_path / "s.h5", detectors=[1], start_sample=100, n_samples=50)
    assert np.array_equal(f.tod, tod[1:2, 100:150])
    assert f.meta.detectors == ["W00_D001"]
    assert f.meta.start_time_s == pytest.approx(100 / 19.0)
    chunks = list(iter_tod_chunks(tmp_path / "s.h5", chunk_samples=300))
    assert np.array_equal(np.concatenate([c for _, c in chunks], axis=1), tod)


def test_failed_write_leaves_no_file(tmp_path):
    out = tmp_path / "x.h5"
    with pytest.raises(RuntimeError):
        with TodWriter(out, _meta()) as w:
            w.write(np.zeros((2, 10), np.float32))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_declared_length_is_an_error(tmp_path):
    with pytest.raises(InputError, match="incomplete"):
        with TodWriter(tmp_path / "x.h5", _meta(), n_samples=100) as w:
            w.write(np.zeros((2, 10), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_wrong_shape_chunk_rejected(tmp_path):
    with TodWriter(tmp_path / "x.h5", _meta()) as w:
        with pytest.raises(InputError, match="shape"):
            w.write(np.zeros((3, 10), np.float32))
        w.write(np.zeros((2, 10), np.float32))


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b"not hdf5 at all"), "not a readable HDF5"),
        (lambda p: h5py.File(p, "w").close(), "no dataset 'tod'"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, setup, message):
    p = tmp_path / "bad.h5"
    setup(p)
    with pytest.raises(FileFormatError, match=message):
        read_tod(p)


def test_nan_and_inconsistent_metadata_detected(tmp_path):
    tod = np.zeros((2, 10), np.float32)
    tod[0, 3] = np.nan
    write_tod(tmp_path / "nan.h5", tod, _meta())
    with pytest.raises(FileFormatError, match="NaN"):
        read_tod(tmp_path / "nan.h5")
    write_tod(tmp_path / "ok.h5", np.zeros((2, 10), np.float32), _meta())
    with h5py.File(tmp_path / "ok.h5", "a") as h:
        h.attrs["detectors"] = json.dumps(["a", "b", "c"])
    with pytest.raises(FileFormatError, match="3 detector names"):
        read_tod(tmp_path / "ok.h5")


def test_format_and_version_are_checked(tmp_path):
    write_tod(tmp_path / "ok.h5", np.zeros((2, 10), np.float32), _meta())
    with h5py.File(tmp_path / "ok.h5", "r") as h:
        assert h.attrs["format"] == "crab-tod" and h.attrs["format_version"] == 1
    with h5py.File(tmp_path / "ok.h5", "a") as h:
        h.attrs["format_version"] = 99
    with pytest.raises(FileFormatError, match="CRAB TOD format version 99 .* reads version 1"):
        read_tod(tmp_path / "ok.h5")
    with h5py.File(tmp_path / "ok.h5", "a") as h:
        h.attrs["format"] = "crab-model"
    with pytest.raises(FileFormatError, match="not a CRAB TOD file"):
        read_metadata(tmp_path / "ok.h5")


def test_writer_refuses_existing_file_and_missing_folder(tmp_path):
    write_tod(tmp_path / "ok.h5", np.zeros((2, 10), np.float32), _meta())
    with pytest.raises(InputError, match="exists"):
        TodWriter(tmp_path / "ok.h5", _meta(), overwrite=False)
    with pytest.raises(InputError, match="does not exist"):
        TodWriter(tmp_path / "nodir" / "x.h5", _meta())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.h5"]


def test_metadata_validation():
    with pytest.raises(InputError, match="sampling_rate_hz"):
        TodMetadata(sampling_rate_hz=0, detectors=["a"])
    with pytest.raises(InputError, match="at least one detector"):
        TodMetadata(sampling_rate_hz=19, detectors=[])
    with pytest.raises(InputError, match="at least 1"):
        default_detector_names(0)
