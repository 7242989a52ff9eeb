"""toolsel.jit: when the vectorising compiler wrapper applies, and that kernels built through it compute the same bits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toolsel.jit import FLAGS, NO_ERRNO, cpu_supports_flags, jit_env, without_wrapper

AVX2_CPU = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c bmi2\n"
SSE_CPU = "processor\t: 0\nflags\t\t: fpu sse2 sse4_2 avx\n"


def test_flags_need_avx2_fma_and_f16c():
    assert cpu_supports_flags(AVX2_CPU)
    assert not cpu_supports_flags(SSE_CPU)
    assert not cpu_supports_flags(AVX2_CPU.replace(" f16c", ""))
    assert not cpu_supports_flags("")


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: MLX cannot build CPU kernels here")
def test_env_puts_a_flag_adding_gxx_first_with_its_own_kernel_cache(tmp_path):
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path)}
    out = jit_env(env, cpuinfo=AVX2_CPU)
    home = Path(out["TMPDIR"])
    assert home.parent == tmp_path and home.name.startswith(f"toolsel-vector-jit-{os.getuid()}-")
    assert out["PATH"].split(os.pathsep)[0] == str(home / "bin")
    assert shutil.which("g++", path=out["PATH"]) == str(home / "bin" / "g++")
    # the wrapper runs the real compiler with MLX's arguments and then the flags; no errno flag for a Power kernel
    echo = tmp_path / "echo-args"
    echo.write_text('#!/bin/sh\necho "$@"\n')
    echo.chmod(0o755)
    (tmp_path / "g++").symlink_to(echo)
    echoing = jit_env({"PATH": f"{tmp_path}{os.pathsep}{env['PATH']}", "TMPDIR": str(tmp_path)}, cpuinfo=AVX2_CPU)
    assert echoing["TMPDIR"] != out["TMPDIR"]  # another compiler, another kernel cache
    (tmp_path / "k.cpp").write_text("float tmp_C = Multiply()(tmp_A, tmp_B);\n")
    (tmp_path / "p.cpp").write_text("float tmp_C = Power()(tmp_A, tmp_B);\n")
    for source, extra in (("k.cpp", [NO_ERRNO]), ("p.cpp", [])):
        ran = subprocess.run([Path(echoing["TMPDIR"]) / "bin" / "g++", "-O3", str(tmp_path / source)],
                             capture_output=True, text=True, check=True)
        assert ran.stdout.split() == ["-O3", str(tmp_path / source), *FLAGS, *extra]
    # applied once only, and not at all where it cannot or should not be
    assert jit_env(out, cpuinfo=AVX2_CPU) == out
    assert jit_env(env, cpuinfo=SSE_CPU) == env
    assert jit_env({**env, "TOOLSEL_VECTOR_JIT": "0"}, cpuinfo=AVX2_CPU)["PATH"] == env["PATH"]
    assert jit_env({"PATH": str(tmp_path / "empty"), "TMPDIR": str(tmp_path)}, cpuinfo=AVX2_CPU)["TMPDIR"] == str(
        tmp_path)


# Fused kernels the trainer runs (AdamW with clipping, sqrt and divide; GeGLU, a clamp; the soft-cap, a libm call
# per element) and a square root by `** 0.5` (a vector sqrt would differ from pow at -0 and -inf): their outputs, to
# compare across two builds. An odd size runs each loop's scalar tail too. g++ takes ~1.4 s a kernel: few here.
KERNELS = """
import sys
import mlx.core as mx, numpy as np
from toolsel.train.fast import geglu
from toolsel.train.optim import adamw_scalars, build_optimizer, fused_adamw_single

rng = np.random.default_rng(0)
x, gate, grad, weight = (rng.normal(size=(257, 97)).astype(np.float32) for _ in range(4))
x.flat[:6] = [0.0, -0.0, np.inf, -np.inf, 1e-42, -1e-42]
x, gate, grad, weight = map(mx.array, (x, gate, grad, weight))
opt = build_optimizer(lr=1e-3, lr_min=1e-4, warmup_steps=0, total_steps=10, weight_decay=1e-2)
opt.init({"w": weight})
opt.state["step"] = mx.array(3)
state = opt.state["w"]
state["v"] = mx.array(rng.uniform(size=(257, 97)).astype(np.float32))
new = fused_adamw_single(opt, grad, weight, state, adamw_scalars(opt, mx.float32), mx.array(0.7))
softcap = mx.compile(lambda a: mx.tanh(a / 30.0) * 30.0)(x * 40)
root = mx.compile(lambda a: a ** 0.5 * 3.0)(x)
out = {"adamw": new, "m": state["m"], "v": state["v"], "geglu": geglu(x, gate), "softcap": softcap, "root": root}
np.savez(sys.argv[1], **{k: np.array(v) for k, v in out.items()})
"""


@pytest.mark.skipif(not cpu_supports_flags() or shutil.which("g++") is None, reason="needs an AVX2 CPU and g++")
def test_vectorised_kernels_compute_the_same_bits(tmp_path):
    # (under `make test` this process runs under the wrapper already: the plain run must not find it)
    plain = {**os.environ, "PATH": without_wrapper(os.environ["PATH"]), "TMPDIR": str(tmp_path / "plain")}
    (tmp_path / "plain").mkdir()
    vector = jit_env({**plain, "TMPDIR": str(tmp_path), "TOOLSEL_VECTOR_JIT": "1"})
    runs = [subprocess.Popen([sys.executable, "-c", KERNELS, str(tmp_path / f"{name}.npz")], env=env)
            for name, env in (("plain", plain), ("vector", vector))]  # at once: each is mostly g++
    assert [run.wait() for run in runs] == [0, 0]
    plain_out, vector_out = np.load(tmp_path / "plain.npz"), np.load(tmp_path / "vector.npz")
    for name in plain_out.files:  # the same bits, except for a NaN's sign and payload
        a, b = plain_out[name], vector_out[name]
        assert np.array_equal(np.isnan(a), np.isnan(b)), name
        assert a[~np.isnan(a)].tobytes() == b[~np.isnan(b)].tobytes(), name
    # the two caches hold the same kernels, built differently
    caches = [Path(env["TMPDIR"]) / "mlx" for env in (plain, vector)]
    libs = [{p.name: p.read_bytes() for p in cache.rglob("*.so")} for cache in caches]
    assert libs[0].keys() == libs[1].keys() and len(libs[0]) >= 4
    assert any(libs[0][name] != libs[1][name] for name in libs[0])
