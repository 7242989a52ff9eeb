"""Make MLX on Linux CPU use an optimized BLAS, and say so loudly when it cannot.

The `mlx[cpu]` wheel bundles the netlib reference BLAS, 37x slower than MKL or OpenBLAS on our machines
(shared/docs/measurements.md). A BLAS can only be swapped before the process starts, so `toolsel` re-executes
itself once with LD_PRELOAD set; `python -m toolsel.blas CMD ...` does the same for any other command (pytest).
The same environment lets MLX's CPU compiler vectorise its fused kernels (toolsel.jit).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from toolsel.jit import jit_env

# glibc keeps freed memory in its heap instead of returning it to the OS (toolsel.allocator): every block up to 1 GiB
# comes from the heap, which is trimmed only past 4 GiB free. Read once at process start, so it rides on the re-exec.
HEAP_TUNABLES = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"
_MARK = "TOOLSEL_BLAS"  # set after the re-exec, holding the preloaded library (or "none")
_OPENBLAS = [
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
]


def find_fast_blas() -> str | None:
    """MKL from the environment's lib/ (pip `mkl`), else a system OpenBLAS, else None."""
    libdirs = {Path(sys.prefix) / "lib", Path(sysconfig.get_config_var("LIBDIR") or sys.prefix)}
    for libdir in sorted(libdirs):
        for name in ("libmkl_rt.so.2", "libmkl_rt.so.3", "libmkl_rt.so"):
            if (libdir / name).exists():
                return str(libdir / name)
    return next((p for p in _OPENBLAS if Path(p).exists()), None)


def preload_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment with a fast BLAS preloaded and MLX's kernel compiler vectorising (toolsel.jit); unchanged off
    Linux, and without the BLAS when none is found."""
    env = dict(os.environ if env is None else env)
    if not sys.platform.startswith("linux") or env.get(_MARK):
        return env
    lib = find_fast_blas()
    env = jit_env(env)
    env[_MARK] = lib or "none"
    if lib:
        env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
        # MKL's own threads fight MLX's CPU threads (measured: 10-100x stalls); one each is the safe default.
        env.setdefault("MKL_NUM_THREADS", "1")
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("GLIBC_TUNABLES", HEAP_TUNABLES)
    return env


def reexec_with_fast_blas() -> None:
    """Re-run this very command under the preloaded BLAS (Linux only, once per process tree)."""
    if not sys.platform.startswith("linux") or os.environ.get(_MARK):
        return
    env = preload_env()
    if env.get(_MARK) != "none":
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    os.environ.update(env)  # nothing to preload: remember, and let slow_blas_warning speak; MLX reads PATH and
    # TMPDIR (toolsel.jit) when it builds its first kernel, later than this


def slow_blas_warning() -> str | None:
    """A warning if this process runs MLX on the bundled reference BLAS."""
    if not sys.platform.startswith("linux") or os.environ.get("TOOLSEL_ALLOW_SLOW_BLAS"):
        return None
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    if "mkl_rt" in maps or "openblas" in maps:
        return None
    return (
        "WARNING: MLX is running on the reference BLAS bundled with mlx[cpu], ~37x slower than MKL/OpenBLAS.\n"
        "  Fix: `pip install mkl` in this environment (or `apt-get install libopenblas0-pthread`) and run via "
        "`toolsel` / `python -m toolsel.blas CMD`. Set TOOLSEL_ALLOW_SLOW_BLAS=1 to silence this."
    )


def warn_if_slow() -> None:
    """Call after importing mlx: prints the slow-BLAS warning to stderr when it applies."""
    message = slow_blas_warning()
    if message:
        print(message, file=sys.stderr, flush=True)


def main() -> None:
    """`python -m toolsel.blas CMD [ARGS...]`: exec CMD with the fast BLAS preloaded."""
    if len(sys.argv) < 2:
        print("usage: python -m toolsel.blas CMD [ARGS...]", file=sys.stderr)
        raise SystemExit(2)
    env = preload_env()
    print(f"toolsel.blas: {env.get(_MARK, 'not linux')}", file=sys.stderr)
    os.execvpe(sys.argv[1], sys.argv[1:], env)


if __name__ == "__main__":
    main()
