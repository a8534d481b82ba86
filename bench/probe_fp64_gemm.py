"""Probe (one device call): ViT-B/16's fp32 weight GEMMs on the FP64 tensor cores (DMMA) instead of fp32 FFMA.

Hopper's FP64 tensor cores have the same peak as its fp32 CUDA cores (67 TFLOP/s on an H200), and cuBLAS's DGEMM
runs nearer its peak than SGEMM does. fp32 inputs widen to fp64 exactly and an fp64 product rounds once to fp32, so
the result is *more* accurate than SGEMM. Times (CUDA graph, median): cuBLAS SGEMM (torch default and cublasLt),
DGEMM on fp64 copies, DGEMM with the casts of X and Y counted; error against float64.
Usage: python3 bench/probe_fp64_gemm.py"""
import torch
from probe_3xtf32 import WEIGHT_GEMMS
from timing import time_graph


def rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(y.double() - ref) / torch.linalg.vector_norm(ref))


def probe(name: str, m: int, k: int, n: int) -> str:
    x = torch.randn(m, k, device="cuda")
    w = torch.randn(k, n, device="cuda") / k ** 0.5
    xd, wd = x.double(), w.double()
    ref = xd @ wd
    torch.backends.cuda.matmul.allow_tf32 = False
    t32 = time_graph(lambda i, st: x @ w, 1)["median_ms"]
    y32 = x @ w
    torch.backends.cuda.preferred_blas_library("cublaslt")
    t32lt = time_graph(lambda i, st: x @ w, 1)["median_ms"]
    torch.backends.cuda.preferred_blas_library("cublas")
    t64 = time_graph(lambda i, st: xd @ wd, 1)["median_ms"]
    t64c = time_graph(lambda i, st: (x.double() @ wd).float(), 1)["median_ms"]
    y64 = (x.double() @ wd).float()
    fl = 2 * m * k * n / 1e12
    return (f"| {name} ({m}, {k}, {n}) | {t32 * 1e3:.1f} ({fl / t32 * 1e3:.1f}) | {t32lt * 1e3:.1f} | "
            f"{t64 * 1e3:.1f} ({fl / t64 * 1e3:.1f}) | {t64c * 1e3:.1f} | {t32 / t64c:.2f}x | "
            f"{rel(y32, ref):.2e} | {rel(y64, ref):.2e} |")


def main() -> None:
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), torch.__version__)
    print("| GEMM (M, K, N) | SGEMM us (TFLOP/s) | SGEMM cublasLt us | DGEMM us (TFLOP/s) | DGEMM + casts us "
          "| SGEMM / DGEMM+casts | SGEMM rel | DGEMM rel |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (m, k, n) in WEIGHT_GEMMS.items():
        print(probe(name, m, k, n))


if __name__ == "__main__":
    main()
