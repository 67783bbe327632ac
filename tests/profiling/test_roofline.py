"""The roofline's bandwidth follows the working set: a model that fits the last-level cache is bounded by the
cache's bandwidth, not DRAM's."""

from __future__ import annotations

from slm.profiling import roofline

MIB = 2**20
HOST = {"bandwidth_Bps": 10e9, "llc_bytes": 480 * MIB,
        "bandwidth_curve": [[16 * MIB, 80e9], [64 * MIB, 60e9], [256 * MIB, 40e9], [2048 * MIB, 10e9]]}


def test_bandwidth_is_read_on_the_curve_at_the_working_set():
    assert roofline.bandwidth_at(HOST, 64 * MIB) == 60e9  # a measured point
    assert 40e9 < roofline.bandwidth_at(HOST, 100 * MIB) < 60e9  # between two, log-interpolated
    assert roofline.bandwidth_at(HOST, 1 * MIB) == 80e9 and roofline.bandwidth_at(HOST, 8 * 2**30) == 10e9
    # a record without a curve (an older cache, a projection-only run) keeps its DRAM figure
    assert roofline.bandwidth_at({"bandwidth_Bps": 5e9}, 100 * MIB) == 5e9


def test_memory_level_names_the_cache_only_where_the_working_set_fits():
    assert roofline.memory_level(HOST, 85 * MIB) == "in the 480 MiB last-level cache"
    assert roofline.memory_level(HOST, 600 * MIB) == "DRAM"
    assert roofline.memory_level({"bandwidth_Bps": 5e9}, 1 * MIB) == "DRAM"


def test_the_last_level_cache_is_read_from_sysfs():
    llc = roofline.llc_bytes()
    # sizes are in bytes: a CPU's last level holds at least a MiB
    assert llc == 0 or llc >= 2**20


def test_a_test_above_its_bound_has_the_cached_peaks_measured_again(tiny, monkeypatch):
    """Peaks cached in a disturbed moment (here 1 kB/s and 1 kFLOP/s) put every test far above its bound; the
    profile measures them again once, and the rows' fractions use the new peaks."""
    from slm.profiling import run
    from slm.profiling.args import Inputs, ProfileArgs
    from slm.spec import load_spec

    model = tiny()
    fresh = {"bandwidth_Bps": 1e15, "flops": 1e18, "peaks": {}, "cached": False}
    calls = []
    monkeypatch.setattr(run.roofline, "host_peaks",
                        lambda threads, refresh=False: calls.append(refresh) or dict(fresh))
    host = {"bandwidth_Bps": 1e3, "flops": 1e3, "peaks": {}, "cached": True}
    args = ProfileArgs(backends="torch", quick=True, threads=1, ops=False)
    out = run.measure_backends(Inputs(hf=model), args, load_spec(model), host, "measured here", False,
                               lambda _: None)
    assert calls == [True] and host["remeasured"] and host["bandwidth_Bps"] == 1e15
    (rows,) = [b["rows"] for b in out.values()]  # one backend, named by its device (torch-cpu)
    assert all(r["roofline_fraction"] < 1 for r in rows) and "notes" not in host
