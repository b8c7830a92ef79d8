"""Resident memory of the calling process, for the benchmarks' one-configuration workers (Linux
/proc; the peak falls back to ru_maxrss where /proc is absent), and MindSpore imported the way
every worker needs it."""

from __future__ import annotations

import os


def _status_mib(key: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if key == "VmHWM":
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return float("nan")


def rss_mib() -> float:
    """Resident set size now, MiB (VmRSS)."""
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """Peak resident set size since start or since the last reset_peak_rss(), MiB (VmHWM)."""
    return _status_mib("VmHWM")


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0), so later peaks exclude what came before."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def import_mindspore(mode: str):
    """MindSpore on the CPU in GRAPH ('graph') or PYNATIVE mode, its convolutions capped at AVX2
    (MindSpore's oneDNN misbehaves with AVX-512 on some CPUs: README, "the ISA trap")."""
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    os.environ.setdefault("GLOG_v", "3")
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE, device_target="CPU")
    return ms
