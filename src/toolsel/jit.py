"""Let MLX's CPU compiler vectorise: the flags its Linux x86-64 wheel leaves out, through a `g++` wrapper.

`mx.compile` on the CPU writes each fused elementwise kernel as a C++ loop and builds it with
`g++ -std=c++17 -O3 -fPIC -shared` found on PATH. The PyPI wheel is built for baseline x86-64, so it adds none of the
`-mavx2 -mfma -mf16c` that an AVX2 build of MLX adds: every fused kernel (the AdamW update, GeGLU, the norms'
gradients: 17% of a training step's CPU time on the bench) runs 4-wide SSE at best. Two more things stop GCC from
vectorising them at all (objdump: no ymm register in the AdamW kernel, and a call to `sqrtf` per element):
- `sqrt` keeps its errno path unless `-fno-math-errno`;
- a loop reading a scalar through a pointer while storing through others needs more runtime alias checks than GCC's
  default limit of 10.

Where the CPU has AVX2, FMA and F16C, `jit_env` puts a `g++` wrapper first on PATH that adds those flags, plus
`-ffp-contract=off`: no multiply-add is fused, so the kernels compute the same values as the scalar build (IEEE
add, multiply, divide and sqrt round the same in any vector width; libm calls stay calls; only the sign and payload
of a NaN may differ). One exception is kept out: without errno GCC's vectoriser turns `pow(x, 0.5)` into a vector
sqrt, which differs at -0 and -inf, so a kernel that raises to a power is built with errno kept, as before.
tests/test_jit.py compares the values, special ones included. MLX keeps built kernels in TMPDIR/mlx/<version>/cpu
and reuses them by name, so the wrapper gets a TMPDIR of its own, named after the user and a hash of the wrapper and
the compiler: kernels built with other flags, another compiler or by another user are never picked up.
`TOOLSEL_VECTOR_JIT=0` turns it off. Applied with the fast BLAS, at the re-exec (toolsel.blas), so it covers every
stage and `python -m toolsel.blas`.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from toolsel.io import atomic_open

FLAGS = ("-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "--param", "vect-max-version-for-alias-checks=200")
NO_ERRNO = "-fno-math-errno"  # added unless the kernel calls Power (see above)
_NEEDS = ("avx2", "fma", "f16c")  # /proc/cpuinfo flags the FLAGS assume
_SWITCH = "TOOLSEL_VECTOR_JIT"
_HOME = "toolsel-vector-jit"  # prefix of the wrapper's directory in TMPDIR, the TMPDIR it gives MLX


def cpu_supports_flags(cpuinfo: str | None = None) -> bool:
    """Whether this is an x86-64 Linux CPU with every instruction set FLAGS compile for."""
    if cpuinfo is None:
        if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
            return False
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return all(need in flags for need in _NEEDS)


def wrapper_script(compiler: str) -> str:
    """A POSIX shell `g++` that runs `compiler` with MLX's arguments followed by FLAGS, and NO_ERRNO unless the
    kernel source (the .cpp argument) calls Power."""
    return (
        "#!/bin/sh\n"
        f"errno={NO_ERRNO}\n"
        'for arg in "$@"; do case "$arg" in *.cpp) grep -q "Power()(" "$arg" && errno=;; esac; done\n'
        f'exec {shlex.quote(compiler)} "$@" {shlex.join(FLAGS)} $errno\n'
    )


def _home_name(script: str, compiler: str) -> str:
    """The wrapper's directory: per user, and per wrapper text and compiler binary (a changed flag or an upgraded
    g++ starts a fresh kernel cache)."""
    stat = os.stat(os.path.realpath(compiler))
    key = hashlib.sha256(f"{script}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"{_HOME}-{os.getuid() if hasattr(os, 'getuid') else 0}-{key}"


def _write_executable(path: Path, text: str) -> None:
    """Write `text` to `path` (mode 755) atomically: concurrent processes may set up the same wrapper."""
    if path.exists() and path.read_text() == text:
        return
    with atomic_open(path, "w") as handle:
        handle.write(text)
        os.fchmod(handle.fileno(), 0o755)  # before the rename: MLX may run it the moment it exists


def without_wrapper(path: str) -> str:
    """PATH less any directory holding our wrapper (a process started under it that sets up its own)."""
    return os.pathsep.join(d for d in path.split(os.pathsep) if not Path(d).parent.name.startswith(_HOME))


def jit_env(env: dict[str, str], cpuinfo: str | None = None) -> dict[str, str]:
    """`env` with the vectorising `g++` first on PATH and TMPDIR pointing at its own kernel cache; `env` itself
    when the CPU lacks the instruction sets, no g++ is on PATH, TOOLSEL_VECTOR_JIT=0, or it is applied already."""
    if env.get(_SWITCH, "1") == "0" or not cpu_supports_flags(cpuinfo):
        return env
    compiler = shutil.which("g++", path=without_wrapper(env.get("PATH", os.defpath)))
    base = Path(env.get("TMPDIR") or tempfile.gettempdir())
    if compiler is None or base.name.startswith(_HOME):
        return env
    script = wrapper_script(compiler)
    home = base / _home_name(script, compiler)
    try:
        _write_executable(home / "bin" / "g++", script)
        if not os.access(home, os.W_OK):
            return env
    except OSError:
        return env  # an unwritable temp dir: MLX builds its kernels as it always does
    return {**env, "PATH": f"{home / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}", "TMPDIR": str(home)}
