"""``python -m mindspore_accum``: what this installation can do, in a few lines.

Package and MindSpore versions, the backend ``choose_backend("auto", device)`` picks for CPU, GPU
and Ascend and why, the CPU kernels' vector ISA and thread count, whether CUDA is compiled in (and
for which architectures), and the oneDNN ISA advice on AVX-512 CPUs. Works without MindSpore and
with a broken build of the compiled extension (it says so instead of failing). Does not import
MindSpore (only reads its package metadata).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from importlib import metadata
from typing import List, Optional

DEVICES = ("CPU", "GPU", "Ascend")

# The fused optimizers (mindspore_accum.optim) and the AOT entry of their window end
# (backends/kernel.py ENTRIES; a test keeps the three in agreement). Named here because this
# report does not import MindSpore, which optim and backends.kernel need.
FUSED_OPTIMIZERS = (
    ("FusedMomentum", "MsAccumMomentumUpdate"),
    ("FusedAdamW", "MsAccumAdamWUpdate"),
    ("FusedLAMB", "MsAccumLambUpdate"),
    ("FusedLARS", "MsAccumLarsUpdate"),
)


def _package_version() -> str:
    try:
        return metadata.version("mindspore_accum")
    except metadata.PackageNotFoundError:
        return "unknown (not installed as a distribution)"


def _mindspore_version() -> Optional[str]:
    try:
        spec = importlib.util.find_spec("mindspore")
    except (ImportError, ValueError):  # ValueError: a None entry in sys.modules
        spec = None
    if spec is None:
        return None
    try:
        return metadata.version("mindspore")
    except metadata.PackageNotFoundError:
        return "importable, version unknown"


def _cpu_flags() -> Optional[set]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


AVX512_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


def _fused_optimizers(package: str) -> str:
    """The fused optimizers, each marked where libmsaccum_aot.so lacks its window-end entry."""
    import ctypes

    try:
        library = ctypes.CDLL(os.path.join(package, "libmsaccum_aot.so"))
    except OSError as err:
        return ", ".join(name for name, _ in FUSED_OPTIMIZERS) + f" (the AOT library cannot be loaded: {err})"
    return ", ".join(
        name if hasattr(library, entry) else f"{name} (MISSING {entry})" for name, entry in FUSED_OPTIMIZERS
    )


def report() -> List[str]:
    lines = []
    package = os.path.dirname(os.path.abspath(__file__))
    lines.append(f"mindspore_accum {_package_version()} ({package})")
    ms_version = _mindspore_version()
    lines.append(f"MindSpore: {ms_version if ms_version else 'not installed'}")

    from .backends import choose_backend

    lines.append('Backend per device (choose_backend("auto", device)):')
    for device in DEVICES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backend, reason = choose_backend("auto", device)
        lines.append(f"  {device:<7}{backend:<9}{reason}")

    try:
        from . import _C

        info = _C.build_info()
    except Exception as err:  # ImportError, or a broken extension  # noqa: BLE001
        lines.append(
            f"Compiled extension: cannot be imported ({type(err).__name__}: {err}); the kernels are "
            "unavailable (reinstall the package: pip install --force-reinstall mindspore_accum)"
        )
        info = None
    if info is not None:
        capped = os.environ.get("MSACCUM_CPU_ISA")
        threads_from = os.environ.get("MSACCUM_NUM_THREADS")
        lines.append(
            f"CPU kernels: vector ISA {info['vector_isa']}"
            + (f" (MSACCUM_CPU_ISA={capped})" if capped else "")
            + f", {info['num_threads']} threads"
            + (
                f" (MSACCUM_NUM_THREADS={threads_from})"
                if threads_from
                else " (the CPUs this process may run on; MSACCUM_NUM_THREADS overrides)"
            )
            + f"; compiler {info['compiler']}"
        )
        lines.append("Fused optimizers: " + _fused_optimizers(package))
        if info["cuda"]:
            lines.append(
                f"CUDA kernels: compiled in for architectures {info['cuda_architectures']}"
                f" (CUDA runtime {info['cuda_runtime']}, linked statically)"
            )
        else:
            lines.append("CUDA kernels: not compiled in (built without nvcc)")

    flags = _cpu_flags()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if flags is None:
        lines.append("oneDNN: CPU flags unknown (no /proc/cpuinfo)")
    elif AVX512_FLAGS <= flags:
        state = f"it is set to {onednn}" if onednn else "it is NOT set in this environment"
        lines.append(
            "oneDNN: this CPU has AVX-512: set ONEDNN_MAX_CPU_ISA=AVX2 before importing MindSpore "
            f"(MindSpore's CPU convolutions are many times faster); {state}"
        )
    else:
        lines.append(
            "oneDNN: this CPU has no AVX-512: ONEDNN_MAX_CPU_ISA is not needed"
            + (f" (set to {onednn})" if onednn else "")
        )
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["consolidate"]:
        return _consolidate(argv[1:])
    print("\n".join(report()))
    return 0


def _consolidate(args: List[str]) -> int:
    """``consolidate OUT SHARD...``: the replicated checkpoint of a sharded run's rank checkpoints
    (each file .ckpt or .safetensors by its extension)."""
    if len(args) < 2:
        print(
            "usage: python -m mindspore_accum consolidate OUT SHARD [SHARD...]\n"
            "  OUT ending in .safetensors writes safetensors, otherwise a .ckpt; "
            "each SHARD is read in the format of its extension",
            file=sys.stderr,
        )
        return 2
    from .sharding.checkpoint import consolidate_checkpoint

    print(consolidate_checkpoint(args[1:], args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
