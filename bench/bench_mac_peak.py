"""This machine's integer multiply-add peak per core, for the forms qgraph's conv kernels use: the limit ``bench/profile_tvm.py`` measures each kernel against.

    python bench/bench_mac_peak.py [--seconds 0.5] [--json FILE]

Two loops of independent accumulator chains (enough to hide each instruction's latency), in
C with AVX2 intrinsics, compiled here with gcc (``-O3 -mavx2``, the inner loop unrolled: accumulators in registers) and called through ctypes:

- ``int16 pairs`` (qgraph's exact form, ``qdirect_conv`` / ``qdw_pconv`` / ``qmatmul_gemm``):
  ``VPMADDWD`` (16 int16 x int16 products summed in pairs into 8 int32) + ``VPADDD``: 16 MACs
  per multiply instruction;
- ``u8 x s8`` (ONNX Runtime's AVX2 kernel and qgraph's ``qdirect_conv_ubsw`` where a proof
  holds): ``VPMADDUBSW`` (32 u8 x s8 products, pairs summed into int16, saturating) then
  ``VPMADDWD`` by ones (widen to int32) + ``VPADDD``: 32 MACs per two multiply instructions;
- ``VPDPBUSD`` (``qdirect_conv_vnni``, only where the CPU has AVX-VNNI or AVX-512 VNNI with VL):
  32 u8 x s8 products summed by fours into 8 int32 accumulators, exact: 32 MACs per instruction;
  ``vpdpbusd 512`` the same on zmm (AVX-512 VNNI, the ``VNNI_512`` kernels' form): 64 MACs.

Printed: GMAC/s of each form on one core (best of 5 runs of ``--seconds``), and the clock-free
ratio of the two. A kernel's fraction of the peak is its MACs per second over this. Single-core
figures: qgraph's bench latencies are 1 and 2 threads on a 2-core machine.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time

#: Accumulator chains per loop, each a distinct product ``a[i % 3] x b[i / 3]``. The products
#: are independent of each other (only the 1-cycle adds chain), so a few chains reach the
#: multipliers' throughput; what matters is that all fits AVX2's 16 ymm registers (6
#: accumulators, 3 + 2 operands, the ones, the u8 x s8 temporaries): 12 + 12 spilled to the
#: stack and measured the stores, and 8 chains over 4 products let gcc share the products.
CHAINS = 6
OPERANDS = 3
#: ``VPDPBUSD``'s chains: its accumulator is an operand, so each chain waits the instruction's
#: latency (5 cycles on Intel, 2 per cycle): 6 chains measured 106 GMAC/s on a Sapphire Rapids
#: core where 10 (all 16 ymm registers with the 5 operands) reach the throughput.
DP_CHAINS = 10

SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>

#define CHAINS %(chains)d
#define OPERANDS %(operands)d
#define DP_CHAINS %(dp_chains)d

/* int16 pairs: acc += madd(a, b); 16 MACs per VPMADDWD. */
int64_t madd_i16(int64_t iters, const int16_t *src) {
    __m256i a[OPERANDS], acc[CHAINS];
    __m256i b0 = _mm256_loadu_si256((const __m256i *)src), b1 = _mm256_loadu_si256((const __m256i *)src + 1);
    for (int i = 0; i < OPERANDS; i++) a[i] = _mm256_loadu_si256((const __m256i *)(src + 16 * (i + 2)));
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_setzero_si256();
    for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 64
        for (int i = 0; i < CHAINS; i++)
            acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(a[i %% OPERANDS], i < OPERANDS ? b0 : b1));
        __asm__ volatile("" : "+x"(b0), "+x"(b1));  /* b unknown each round: no hoisting */
    }
    __m256i s = acc[0];
    for (int i = 1; i < CHAINS; i++) s = _mm256_add_epi32(s, acc[i]);
    int32_t out[8];
    _mm256_storeu_si256((__m256i *)out, s);
    return (int64_t)out[0] + out[7];
}

/* VPDPBUSD (AVX-VNNI, the VEX form; AVX-512 VNNI CPUs since Sapphire Rapids have it too, and an
   EVEX-only CPU (Ice Lake, Cascade Lake) runs the same intrinsic compiled for avx512vnni+vl). */
#define DPBUSD_BODY \
    __m256i a[OPERANDS], acc[DP_CHAINS]; \
    __m256i b0 = _mm256_loadu_si256((const __m256i *)src), b1 = _mm256_loadu_si256((const __m256i *)src + 1); \
    for (int i = 0; i < OPERANDS; i++) a[i] = _mm256_loadu_si256((const __m256i *)(src + 32 * (i + 2))); \
    for (int i = 0; i < DP_CHAINS; i++) acc[i] = _mm256_setzero_si256(); \
    for (int64_t it = 0; it < iters; it++) { \
        _Pragma("GCC unroll 64") \
        for (int i = 0; i < DP_CHAINS; i++) acc[i] = DPBUSD(acc[i], a[i %% OPERANDS], i < OPERANDS ? b0 : b1); \
        __asm__ volatile("" : "+x"(b0), "+x"(b1)); \
    } \
    __m256i s = acc[0]; \
    for (int i = 1; i < DP_CHAINS; i++) s = _mm256_add_epi32(s, acc[i]); \
    int32_t out[8]; \
    _mm256_storeu_si256((__m256i *)out, s); \
    return (int64_t)out[0] + out[7];

#define DPBUSD _mm256_dpbusd_avx_epi32
__attribute__((target("avxvnni"))) int64_t dpbusd_vex(int64_t iters, const int8_t *src) { DPBUSD_BODY }
#undef DPBUSD
#define DPBUSD _mm256_dpbusd_epi32
__attribute__((target("avx512vnni,avx512vl"))) int64_t dpbusd_evex(int64_t iters, const int8_t *src) { DPBUSD_BODY }

/* 512-bit VPDPBUSD (AVX-512 VNNI): 64 MACs per instruction, 12 chains (32 registers). */
__attribute__((target("avx512f,avx512bw,avx512vnni"))) int64_t dpbusd_zmm(int64_t iters, const int8_t *src) {
    __m512i a[OPERANDS], acc[12];
    __m512i b0 = _mm512_loadu_si512(src), b1 = _mm512_loadu_si512(src + 64);
    for (int i = 0; i < OPERANDS; i++) a[i] = _mm512_loadu_si512(src + 64 * (i + 2));
    for (int i = 0; i < 12; i++) acc[i] = _mm512_setzero_si512();
    for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 64
        for (int i = 0; i < 12; i++) acc[i] = _mm512_dpbusd_epi32(acc[i], a[i %% OPERANDS], i < 6 ? b0 : b1);
        __asm__ volatile("" : "+v"(b0), "+v"(b1));
    }
    __m512i s = acc[0];
    for (int i = 1; i < 12; i++) s = _mm512_add_epi32(s, acc[i]);
    int32_t out[16];
    _mm512_storeu_si512(out, s);
    return (int64_t)out[0] + out[15];
}

/* u8 x s8: acc += madd(maddubs(a, b), ones); 32 MACs per VPMADDUBSW + VPMADDWD. */
int64_t madd_u8s8(int64_t iters, const int8_t *src) {
    __m256i a[OPERANDS], acc[CHAINS];
    __m256i b0 = _mm256_loadu_si256((const __m256i *)src), b1 = _mm256_loadu_si256((const __m256i *)src + 1);
    const __m256i ones = _mm256_set1_epi16(1);
    for (int i = 0; i < OPERANDS; i++) a[i] = _mm256_loadu_si256((const __m256i *)(src + 32 * (i + 2)));
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_setzero_si256();
    for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 64
        for (int i = 0; i < CHAINS; i++)
            acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(_mm256_maddubs_epi16(a[i %% OPERANDS],
                                                                                      i < OPERANDS ? b0 : b1), ones));
        __asm__ volatile("" : "+x"(b0), "+x"(b1));
    }
    __m256i s = acc[0];
    for (int i = 1; i < CHAINS; i++) s = _mm256_add_epi32(s, acc[i]);
    int32_t out[8];
    _mm256_storeu_si256((__m256i *)out, s);
    return (int64_t)out[0] + out[7];
}
"""

#: MACs per loop round of each form.
MACS_PER_ROUND = {"int16 pairs": 16 * CHAINS, "u8 x s8": 32 * CHAINS, "vpdpbusd": 32 * DP_CHAINS,
                  "vpdpbusd 512": 64 * 12}


def _flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    except OSError:
        return set()


def avx512_vnni() -> bool:
    """Whether the CPU runs 512-bit ``VPDPBUSD`` (AVX-512 VNNI)."""
    return {"avx512_vnni", "avx512f", "avx512bw"} <= _flags()


def vnni_form() -> str | None:
    """``"vex"`` (AVX-VNNI), ``"evex"`` (AVX-512 VNNI with VL) or None: which ``VPDPBUSD`` this
    CPU runs (``/proc/cpuinfo``'s flags; None where there is no such file)."""
    flags = _flags()
    if "avx_vnni" in flags:
        return "vex"
    return "evex" if {"avx512_vnni", "avx512vl"} <= flags else None


def _library(workdir: str) -> ctypes.CDLL:
    src = os.path.join(workdir, "mac_peak.c")
    lib = os.path.join(workdir, "mac_peak.so")
    with open(src, "w") as f:
        f.write(SOURCE % {"chains": CHAINS, "operands": OPERANDS, "dp_chains": DP_CHAINS})
    subprocess.run(["gcc", "-O3", "-mavx2", "-shared", "-fPIC", "-o", lib, src], check=True)
    dll = ctypes.CDLL(lib)
    for name in ("madd_i16", "madd_u8s8", "dpbusd_vex", "dpbusd_evex", "dpbusd_zmm"):
        fn = getattr(dll, name)
        fn.restype = ctypes.c_int64
        fn.argtypes = [ctypes.c_int64, ctypes.c_void_p]
    return dll


def peak(seconds: float = 0.5, repeats: int = 5) -> dict[str, float]:
    """``{form: GMAC/s on one core}`` for ``int16 pairs``, ``u8 x s8`` and, where the CPU has it
    (``vnni_form``), ``vpdpbusd`` (256-bit) and ``vpdpbusd 512`` (AVX-512 VNNI)."""
    size = 32 * (OPERANDS + 2) * 2
    buf = (ctypes.c_int8 * size)(*[(i * 37) % 97 - 48 for i in range(size)])
    with tempfile.TemporaryDirectory(prefix="mac_peak_") as d:
        dll = _library(d)
        out = {}
        forms = [("int16 pairs", dll.madd_i16), ("u8 x s8", dll.madd_u8s8)]
        vnni = vnni_form()
        if vnni is not None:
            forms.append(("vpdpbusd", getattr(dll, "dpbusd_" + vnni)))
        if avx512_vnni():
            forms.append(("vpdpbusd 512", dll.dpbusd_zmm))
        for form, fn in forms:
            fn(1000, buf)
            t0 = time.perf_counter()
            iters = 1000
            while time.perf_counter() - t0 < 0.05:  # calibrate: a round count of about `seconds`
                iters *= 2
                t1 = time.perf_counter()
                fn(iters, buf)
                dt = time.perf_counter() - t1
            iters = max(1000, int(iters * seconds / max(dt, 1e-6)))
            best = float("inf")
            for _ in range(repeats):
                t1 = time.perf_counter()
                fn(iters, buf)
                best = min(best, time.perf_counter() - t1)
            out[form] = iters * MACS_PER_ROUND[form] / best / 1e9
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="length of one timed run (default 0.5)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    res = peak(args.seconds)
    for form, g in res.items():
        print(f"{form:12s} {g:7.1f} GMAC/s per core")
    print(f"u8 x s8 / int16 pairs: {res['u8 x s8'] / res['int16 pairs']:.2f}")
    if "vpdpbusd" in res:
        print(f"vpdpbusd / int16 pairs: {res['vpdpbusd'] / res['int16 pairs']:.2f}")
    if "vpdpbusd 512" in res:
        print(f"vpdpbusd 512 / 256: {res['vpdpbusd 512'] / res['vpdpbusd']:.2f}")
    else:
        print("vpdpbusd: not on this CPU (no AVX-VNNI, no AVX-512 VNNI with VL)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
