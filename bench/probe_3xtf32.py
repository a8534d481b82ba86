"""Probe (one device call): fp32 GEMMs as three TF32 products (3xTF32: X = Xh + Xl, W = Wh + Wl, each high part
TF32-exact, Y = Xh·Wh + Xh·Wl + Xl·Wh as one GEMM over [Xh | Xh | Xl] and [Wh; Wl; Wh]) against cuBLAS fp32 SGEMM
and plain TF32, on the weight GEMMs of ViT-B/16 and BERT-base at B=8: time (CUDA graph, median) and error against
float64. Usage: python3 bench/probe_3xtf32.py"""
import torch
from timing import time_graph


def split(x: torch.Tensor, nearest: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x = hi + lo, hi TF32-exact (10 explicit mantissa bits): truncated, or rounded to nearest (then |lo| is half
    as large)."""
    bits = x.view(torch.int32)
    hi = ((bits + 4096 if nearest else bits) & -8192).view(torch.float32)
    return hi, x - hi


def rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(y.double() - ref) / torch.linalg.vector_norm(ref))


def probe(name: str, m: int, k: int, n: int) -> str:
    x = torch.randn(m, k, device="cuda")
    w = torch.randn(k, n, device="cuda") / k ** 0.5
    ref = x.double() @ w.double()
    xh, xl = split(x)
    wh, wl = split(w)
    xc = torch.cat([xh, xh, xl], 1)
    wc = torch.cat([wh, wl, wh], 0).contiguous()
    torch.backends.cuda.matmul.allow_tf32 = False
    t32 = time_graph(lambda i, st: x @ w, 1)["median_ms"]
    y32 = x @ w
    torch.backends.cuda.matmul.allow_tf32 = True
    ttf = time_graph(lambda i, st: x @ w, 1)["median_ms"]
    ytf = x @ w
    t3 = time_graph(lambda i, st: xc @ wc, 1)["median_ms"]
    y3 = xc @ wc
    # variants for the error: the fourth term Xl·Wl too; round-to-nearest splits (3 and 4 terms)
    y4 = torch.cat([xh, xh, xl, xl], 1) @ torch.cat([wh, wl, wh, wl], 0)
    xhn, xln = split(x, True)
    whn, wln = split(w, True)
    y3n = torch.cat([xhn, xhn, xln], 1) @ torch.cat([whn, wln, whn], 0)
    y4n = torch.cat([xhn, xhn, xln, xln], 1) @ torch.cat([whn, wln, whn, wln], 0)
    out = torch.empty(m, 3 * k, device="cuda")

    def do_split(i, st):
        hi = (x.view(torch.int32) & -8192).view(torch.float32)
        out[:, :k] = hi
        out[:, k:2 * k] = hi
        torch.sub(x, hi, out=out[:, 2 * k:])
    tsp = time_graph(do_split, 1)["median_ms"]
    torch.backends.cuda.matmul.allow_tf32 = False
    return (f"| {name} ({m}, {k}, {n}) | {t32 * 1e3:.1f} | {ttf * 1e3:.1f} | {t3 * 1e3:.1f} | {tsp * 1e3:.1f} | "
            f"{rel(y32, ref):.2e} | {rel(ytf, ref):.2e} | {rel(y3, ref):.2e} | {rel(y4, ref):.2e} | "
            f"{rel(y3n, ref):.2e} | {rel(y4n, ref):.2e} |")


# ViT-B/16's and BERT-base's weight GEMMs at B=8, (M, K, N)
WEIGHT_GEMMS = {"vit qkv": (1576, 768, 2304), "vit out": (1576, 768, 768), "vit fc1": (1576, 768, 3072),
                "vit fc2": (1576, 3072, 768), "bert512 fc1": (4096, 768, 3072), "bert128 qkv": (1024, 768, 2304)}


def main() -> None:
    torch.manual_seed(0)
    print("| GEMM (M, K, N) | fp32 us | tf32 us | 3xtf32 us (one 3K GEMM) | split us | fp32 rel | tf32 rel "
          "| 3xtf32 rel | 4 terms rel | 3 terms, nearest rel | 4 terms, nearest rel |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (m, k, n) in WEIGHT_GEMMS.items():
        print(probe(name, m, k, n))


if __name__ == "__main__":
    main()
