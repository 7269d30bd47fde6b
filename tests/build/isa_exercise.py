"""Load bitsandbytes' CPU library and run its blockwise kernels (stdlib only: no torch, no numpy).

The image tests run this inside an image under `qemu-x86_64 -cpu Haswell` (AVX2, no AVX-512): an
AVX-512 instruction on the executed path dies with SIGILL (exit 132) there, whatever CPU the build host
has. Exit 0 and one line of figures when every kernel ran and round-tripped.
Usage: python3 isa_exercise.py /path/to/libbitsandbytes_cpu.so
"""

from __future__ import annotations

import ctypes
import math
import sys
from pathlib import Path

LL = ctypes.c_longlong


def floats(values):
    return (ctypes.c_float * len(values))(*values)


def main(path: str) -> int:
    # The library needs libgomp.so.1, which the slim images have only as torch's bundled copy (bitsandbytes
    # imports torch first, which loads it): load that copy the same way, by soname, before the library.
    for gomp in sorted(Path(path).resolve().parents[1].glob("torch/lib/libgomp*.so*")):
        ctypes.CDLL(str(gomp), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(path)
    n, block = 4096, 64
    data = [math.sin(i * 0.37) * (1 + i % 7) for i in range(n)]
    code = floats([-1 + 2 * i / 255 for i in range(256)])  # a linear 8-bit code
    absmax = floats([0.0] * (n // block))
    packed = (ctypes.c_ubyte * n)()
    out = floats([0.0] * n)
    lib.cquantize_blockwise_cpu_fp32(code, floats(data), absmax, packed, LL(block), LL(n))
    lib.cdequantize_blockwise_cpu_fp32(code, packed, absmax, out, LL(block), LL(n))
    worst = max(abs(a - b) / (1 + abs(a)) for a, b in zip(data, out))
    rows, cols = 64, 128  # nf4: two 4-bit values per byte
    nibbles = (ctypes.c_ubyte * (rows * cols // 2))(*[(i * 37) % 256 for i in range(rows * cols // 2)])
    scales = floats([1.0 + (i % 5) for i in range(rows * cols // block)])
    nf4 = floats([0.0] * (rows * cols))
    lib.cdequantize_blockwise_cpu_nf4_fp32(nibbles, scales, nf4, LL(block), LL(rows), LL(cols))
    finite = all(math.isfinite(v) and abs(v) <= 6.0 for v in nf4)
    nonzero = sum(1 for v in nf4 if v != 0.0)
    print(f"8-bit blockwise round trip: worst relative error {worst:.4f}; nf4 dequantize: {nonzero}/{len(nf4)} non-zero, finite {finite}")
    return 0 if worst < 0.05 and finite and nonzero > len(nf4) // 2 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
