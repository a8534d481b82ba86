"""Attention's ``flash_tf32`` tactic: FlashAttention-2's forward on TF32 tensor cores, for fp32 tensors.

Part of the attention family (kernels/attention.py owns the launch contract, the numpy reference and the runner);
this module holds the tactic's device source, its entry points and its launch rule. TF32 keeps 10 mantissa bits
of each operand, so the tactic is chosen only for models fused with ``--allow-tf32`` (fuser/tune.py
``assign_attention_tactics``), like the ``mma_tf32`` conv tactics; fp32 without it stays on ``flash_simt``.

The kernel (fp32 Q/K/V, D and Dv multiples of 8 up to 128, 16-byte aligned rows, every score term and causal):

- a block is 4 warps; each warp owns MT x 16 query rows (MT = 1 or 2: 64 or 128 rows per block). Q is read once
  from global memory straight into ``mma.sync.m16n8k8`` A-fragments (rounded to TF32, see below);
- K and V tiles of BC keys (64 at head dims <= 64, 32 above) stream through shared memory with 16-byte
  ``cp.async`` copies, two stages, K and V in separate commit groups: K(kt+1) and V(kt+1) are issued before
  tile kt is computed, S(kt) waits for K(kt) only and P·V(kt) for V(kt). Rows are padded (K by 8 floats, V by 4)
  so that the fragment reads below are free of bank conflicts;
- S = Q·Kᵀ on ``mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32`` (fp32 accumulators). The reduction index
  inside each 8-wide k-step is permuted (k-slot t <-> column 2t, slot t+4 <-> column 2t+1, the same for both
  operands, so the sum is unchanged): a lane's two B values of a step are adjacent columns of one K row, one
  64-bit shared-memory load, and its Q values adjacent columns of one Q row;
- the online softmax is attention's accumulator code (``fuser_attn_online``, shared with flash_mma: the
  m16n8k8 accumulator layout is the m16n8k16 one): fp32 max/sum with quad shuffles, exp2 with the scale folded
  in on full tiles, bounds/causal/terms (additive bias, boolean mask, Swin's window bias, the key-padding
  specialisation CB) on the others, -inf-safe, NaN or 0 (nan_zero) for fully masked rows;
- O += P·V: P never leaves registers. An accumulator holds keys 2t and 2t+1 of an 8-key block, which are
  exactly the A-fragment's k-slots t and t+4 under the same permutation of the keys; V's B-fragment then reads
  rows 2t and 2t+1 of the block (two 32-bit loads, conflict-free with V's padding).

Rounding: every operand is rounded to TF32 to nearest (ties away from zero, what ``cvt.rna`` does): half a TF32
ulp (bit 12) is added to the fp32 pattern with one integer add and the tensor cores ignore the low 13 bits. Q
once per block, P once per tile, K and V per fragment load. The ``_trunc`` variants leave K and V unrounded
(truncated by the tensor cores: two integer adds per mma less, a bias toward zero). Measured rel-L2 against
float64: BENCHMARKS.md ("Attention on TF32 tensor cores").

Off NVIDIA (hiprtc) the entry points compile to the CUDA-core kernel (the launch rule never picks them there: it
falls back to ``flash_simt``). ``FUSER_ATTN_TF32_EMU`` (tests/kernels' CPU emulator only) compiles the tensor-core
kernel with a portable mma of the same fragment contract and synchronous copies, to test its logic on a CPU.
"""

from __future__ import annotations

# The device code. Needs attention's COMMON before it (fuser_attn_params, fuser_attn_online, fuser_attn_inv).
SOURCE = r"""
// ============================== flash_tf32: TF32 tensor cores, fp32 tensors ==============================
#if defined(FUSER_CUDA) || defined(FUSER_ATTN_TF32_EMU)
// An fp32 value as a TF32 operand rounded to nearest, ties away (cvt.rna's rounding): half a TF32 ulp added to
// the pattern; the tensor cores ignore the 13 low bits. fuser_atf_raw: the value as it is (truncated there).
FUSER_INLINE fuser_u32 fuser_atf_rna(float x) { return __float_as_uint(x) + 0x1000u; }
FUSER_INLINE fuser_u32 fuser_atf_raw(float x) { return __float_as_uint(x); }
#if defined(FUSER_CUDA)
// d += A(16x8, row) * B(8x8, col). Lane = 4 g + t: a = {A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4]},
// b = {B[t][g], B[t+4][g]}, d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}.
FUSER_INLINE void fuser_atf_mma(float (&d)[4], const fuser_u32 (&a)[4], fuser_u32 b0, fuser_u32 b1) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// 16 bytes global -> shared, asynchronous (complete for this thread after fuser_atf_wait, for the block after a
// barrier); zeros when !ok (src is then not read).
FUSER_INLINE void fuser_atf_cp16(float* dst, const float* src, bool ok) {
    fuser_u32 s;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(s) : "l"(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(s), "l"(src), "r"(ok ? 16 : 0) : "memory");
}
FUSER_INLINE void fuser_atf_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> FUSER_INLINE void fuser_atf_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }
#define FUSER_ATF_SMEM(name, n) extern __shared__ __align__(16) float name[]
#else
// The CPU emulator: the same fragment contract computed from every lane's registers (exchanged through a static
// buffer between two block barriers: every warp of a block issues the same mmas, in the same order), operands
// masked to their 19 TF32 bits as the tensor cores read them; copies are synchronous.
FUSER_INLINE void fuser_atf_mma(float (&d)[4], const fuser_u32 (&a)[4], fuser_u32 b0, fuser_u32 b1) {
    static fuser_u32 xa[128][4], xb[128][2];
    const int tid = threadIdx.x, w0 = tid & ~31, g = (tid & 31) >> 2, t = tid & 3;
    for (int i = 0; i < 4; ++i) xa[tid][i] = a[i];
    xb[tid][0] = b0;
    xb[tid][1] = b1;
    __syncthreads();
    for (int kk = 0; kk < 8; ++kk)
        for (int hr = 0; hr < 2; ++hr)
            for (int e = 0; e < 2; ++e) {
                const float x = __uint_as_float(xa[w0 + g * 4 + (kk & 3)][hr + 2 * (kk >> 2)] & 0xffffe000u);
                const float y = __uint_as_float(xb[w0 + (2 * t + e) * 4 + (kk & 3)][kk >> 2] & 0xffffe000u);
                d[2 * hr + e] = fmaf(x, y, d[2 * hr + e]);
            }
    __syncthreads();
}
FUSER_INLINE void fuser_atf_cp16(float* dst, const float* src, bool ok) {
    for (int u = 0; u < 4; ++u) dst[u] = ok ? src[u] : 0.0f;
}
FUSER_INLINE void fuser_atf_commit() {}
template <int N> FUSER_INLINE void fuser_atf_wait() {}
#define FUSER_ATF_SMEM(name, n) static __align__(16) float name[n]
#endif

// ROWS rows of HD floats of a row-major fp32 tensor (row stride ld, 16-byte aligned rows; columns past `width`
// and rows past `rows_left` zero) into shared-memory rows of LD floats, 16-byte cp.async chunks: each of the
// 128 threads on a fixed chunk column and every (128 / (HD / 4))-th row (a per-thread base plus constant steps).
template <int ROWS, int HD, int LD>
FUSER_INLINE void fuser_atf_tile(float* dst, const float* src, fuser_i64 ld, int rows_left, int width) {
    enum { CH = HD / 4, RPP = 128 / CH };
    const int lr = threadIdx.x / CH, lc = threadIdx.x % CH;
    const bool col_ok = lc * 4 < width;
    float* d0 = dst + lr * LD + lc * 4;
    const float* s0 = src + (fuser_i64)lr * ld + lc * 4;
#pragma unroll
    for (int i = 0; i < ROWS / RPP; ++i) {
        const bool ok = col_ok && lr + i * RPP < rows_left;
        fuser_atf_cp16(d0 + i * RPP * LD, ok ? s0 + (fuser_i64)(i * RPP) * ld : src, ok);
    }
}

// HD: head dims padded to 64 or 128; BC keys per tile; MT m16-tiles (16 query rows) per warp; RK: round K and V
// to TF32 (else truncated); CB: the kernel for one key-padding-like bias (see fuser_attn_online).
template <int HD, int BC, int MT, int RK, int CB>
FUSER_INLINE void fuser_attn_tf32(const fuser_attn_params& p) {
    enum { BR = 64 * MT, KS = HD / 8, NN = BC / 8, NO = HD / 8, LDK = HD + 8, LDV = HD + 4, KT = BC * LDK,
           VT = BC * LDV };
    // [2][BC][LDK] K stages, [2][BC][LDV] V stages, [2][BC] key-padding bias (CB). LDK = 8 mod 32 words: the 64-bit
    // K reads of a half-warp (rows g, columns 2t) cover all 32 banks; 2 * LDV = 8 mod 32: V reads (rows 2t, 2t + 1,
    // column g) too.
    FUSER_ATF_SMEM(fuser_atf_sm, 2 * (KT + VT + BC));
    float* Ks = fuser_atf_sm;
    float* Vs = fuser_atf_sm + 2 * KT;
    float* Bs = Vs + 2 * VT;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BR;
    const int hk = h / (p.H / p.Hkv);
    const float* q = (const float*)p.q + (fuser_i64)b * p.q_sb + (fuser_i64)h * p.q_sh;
    const float* k = (const float*)p.k + (fuser_i64)b * p.k_sb + (fuser_i64)hk * p.k_sh;
    const float* v = (const float*)p.v + (fuser_i64)b * p.v_sb + (fuser_i64)hk * p.v_sh;
    float* o = (float*)p.o + (fuser_i64)b * p.o_sb + (fuser_i64)h * p.o_sh;
    int ntiles = (p.Skv + BC - 1) / BC;
    if (p.causal) {  // keys past the block's last row are masked for every row: those tiles are not visited
        const int last = (q0 + BR < p.Sq ? q0 + BR : p.Sq) - 1;
        const int lim = last / BC + 1;
        ntiles = ntiles < lim ? ntiles : lim;
    }
    // two commit groups per tile (K, then V), empty ones included, so that the waits below count uniformly
    if (ntiles > 0) fuser_atf_tile<BC, HD, LDK>(Ks, k, p.k_ss, p.Skv, p.D);
    fuser_atf_commit();
    if (ntiles > 0) fuser_atf_tile<BC, HD, LDV>(Vs, v, p.v_ss, p.Skv, p.Dv);
    fuser_atf_commit();
    // Q's A-fragments (k-slots t, t+4 = columns 2t, 2t+1 of each 8-column step), rounded to TF32
    const int rw = q0 + warp * 16 * MT + g;  // this lane's first row; m-tile mt adds 16 mt, the second half 8
    fuser_u32 qf[MT][KS][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const int row = rw + 16 * mt + 8 * hr;
            const float* qrow = q + (fuser_i64)(row < p.Sq ? row : 0) * p.q_ss + 2 * t;
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) {
                float2 x;
                x.x = x.y = 0.0f;
                if (row < p.Sq && ks * 8 + 2 * t < p.D) x = *reinterpret_cast<const float2*>(qrow + ks * 8);
                qf[mt][ks][hr] = fuser_atf_rna(x.x);
                qf[mt][ks][2 + hr] = fuser_atf_rna(x.y);
            }
        }
    // Tiles that need masking (keys past Skv, causal) or a key-padding bias (CB) take the folded softmax too when
    // the scale is positive: masked scores are set to -inf here and CB's bias, divided by the scale once per key
    // and staged in shared memory, is added to the raw dot products (fuser_attn_online's per-score path reads the
    // terms from global memory inside the softmax and costs several full tiles).
    const bool fast = p.scale > 0.0f && (CB || p.nterms == 0);
    fuser_i64 boff[FUSER_ATTN_TERMS];
    if (CB) fuser_attn_row(p, b, h, 0, boff);
    float oacc[MT][NO][4], m_r[MT][2], l_r[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int n = 0; n < NO; ++n) oacc[mt][n][0] = oacc[mt][n][1] = oacc[mt][n][2] = oacc[mt][n][3] = 0.0f;
        m_r[mt][0] = m_r[mt][1] = FUSER_NEG_INF;
        l_r[mt][0] = l_r[mt][1] = 0.0f;
    }
    for (int kt = 0; kt < ntiles; ++kt) {
        const int st = kt & 1, k0 = kt * BC, n0 = k0 + BC;
        // the other stage was last read in iteration kt - 1, which ended with a barrier
        if (kt + 1 < ntiles)
            fuser_atf_tile<BC, HD, LDK>(Ks + (st ^ 1) * KT, k + (fuser_i64)n0 * p.k_ss, p.k_ss, p.Skv - n0, p.D);
        fuser_atf_commit();
        if (kt + 1 < ntiles)
            fuser_atf_tile<BC, HD, LDV>(Vs + (st ^ 1) * VT, v + (fuser_i64)n0 * p.v_ss, p.v_ss, p.Skv - n0, p.Dv);
        fuser_atf_commit();
        if (CB && fast && threadIdx.x < BC) {  // this tile's bias / scale (stage st was last read in kt - 2)
            const int j = k0 + threadIdx.x;
            Bs[st * BC + threadIdx.x] = j < p.Skv ? fuser_attn_terms(p, boff, j, 0.0f) / p.scale : FUSER_NEG_INF;
        }
        fuser_atf_wait<3>();  // K(kt) (V(kt), K(kt+1), V(kt+1) may still be in flight)
        __syncthreads();
        // S = Q·Kᵀ: B-fragment of key block n, step ks = K[n*8 + g][ks*8 + 2t .. +1], one 64-bit load
        const float* kf = Ks + st * KT + g * LDK + 2 * t;
        float sacc[MT][NN][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int n = 0; n < NN; ++n) sacc[mt][n][0] = sacc[mt][n][1] = sacc[mt][n][2] = sacc[mt][n][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < KS; ++ks) {
            fuser_u32 kb[NN][2];
#pragma unroll
            for (int n = 0; n < NN; ++n) {
                const float2 x = *reinterpret_cast<const float2*>(kf + n * 8 * LDK + ks * 8);
                kb[n][0] = RK ? fuser_atf_rna(x.x) : fuser_atf_raw(x.x);
                kb[n][1] = RK ? fuser_atf_rna(x.y) : fuser_atf_raw(x.y);
            }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int n = 0; n < NN; ++n) fuser_atf_mma(sacc[mt][n], qf[mt][ks], kb[n][0], kb[n][1]);
        }
        const bool full = p.nterms == 0 && k0 + BC <= p.Skv && (!p.causal || k0 + BC - 1 <= q0);
        if (fast && (CB || !full)) {
            const float* bt = Bs + st * BC + 2 * t;
#pragma unroll
            for (int n = 0; n < NN; ++n) {
                float2 bj;
                bj.x = bj.y = 0.0f;
                if (CB) bj = *reinterpret_cast<const float2*>(bt + n * 8);
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int j = k0 + n * 8 + 2 * t + e;
                    const float bv = e ? bj.y : bj.x;
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                        for (int hr = 0; hr < 2; ++hr) {
                            const float x = sacc[mt][n][2 * hr + e] + bv;
                            const bool dead = (!CB && j >= p.Skv) || (p.causal && j > rw + 16 * mt + 8 * hr);
                            sacc[mt][n][2 * hr + e] = dead ? FUSER_NEG_INF : x;
                        }
                }
            }
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
            fuser_attn_online<NN, NO, CB>(p, sacc[mt], oacc[mt], m_r[mt], l_r[mt], fast || full, b, h, rw + 16 * mt,
                                          k0, t);
        fuser_atf_wait<2>();  // V(kt)
        __syncthreads();
        // O += P·V over 8-key blocks: A = {P[g][2t], P[g+8][2t], P[g][2t+1], P[g+8][2t+1]} (the accumulators),
        // B = {V[2t][n*8 + g], V[2t+1][n*8 + g]}
        const float* vf = Vs + st * VT + 2 * t * LDV + g;
#pragma unroll
        for (int kk = 0; kk < NN; ++kk) {
            fuser_u32 pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                pa[mt][0] = fuser_atf_rna(sacc[mt][kk][0]);
                pa[mt][1] = fuser_atf_rna(sacc[mt][kk][2]);
                pa[mt][2] = fuser_atf_rna(sacc[mt][kk][1]);
                pa[mt][3] = fuser_atf_rna(sacc[mt][kk][3]);
            }
            fuser_u32 vb[NO][2];
#pragma unroll
            for (int n = 0; n < NO; ++n) {
                const float* vp = vf + kk * 8 * LDV + n * 8;
                vb[n][0] = RK ? fuser_atf_rna(vp[0]) : fuser_atf_raw(vp[0]);
                vb[n][1] = RK ? fuser_atf_rna(vp[LDV]) : fuser_atf_raw(vp[LDV]);
            }
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int n = 0; n < NO; ++n) fuser_atf_mma(oacc[mt][n], pa[mt], vb[n][0], vb[n][1]);
        }
        __syncthreads();  // this stage is free for tile kt + 2
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const int row = rw + 16 * mt + 8 * hr;
            if (row >= p.Sq) continue;
            float* orow = o + (fuser_i64)row * p.o_ss;
            const float inv = fuser_attn_inv(l_r[mt][hr], p.nan_zero);  // one reciprocal per row
#pragma unroll
            for (int n = 0; n < NO; ++n) {
                const int col = n * 8 + 2 * t;
                if (col < p.Dv) {
                    float2 r;
                    r.x = oacc[mt][n][2 * hr] * inv;
                    r.y = oacc[mt][n][2 * hr + 1] * inv;
                    *reinterpret_cast<float2*>(orow + col) = r;
                }
            }
        }
}
#endif  // NVIDIA or the emulator
"""

# Entry points: HD, BC, MT, RK, CB as above; MINB the blocks per SM the register allocation is held to; SDM/SBR
# the CUDA-core kernel's head dims and rows the entry compiles to off NVIDIA (never launched there).
ENTRY_MACROS = r"""
#if defined(FUSER_CUDA) || defined(FUSER_ATTN_TF32_EMU)
#define FUSER_ATTN_TF32(NAME, HD, BC, MT, RK, CB, MINB, SDM, SBR)                                        \
    FUSER_GLOBAL void __launch_bounds__(128, MINB) NAME(const fuser_attn_params p) {                        \
        fuser_attn_tf32<HD, BC, MT, RK, CB>(p);                                                          \
    }
#else
#define FUSER_ATTN_TF32(NAME, HD, BC, MT, RK, CB, MINB, SDM, SBR)                                        \
    FUSER_GLOBAL void __launch_bounds__(128) NAME(const fuser_attn_params p) {                               \
        fuser_attn_simt<float, SDM, SBR, 128>(p);                                                        \
    }
#endif
"""

# variant -> (padded head dims, keys per tile, m16-tiles per warp, min blocks per SM)
TF_VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "64m1": (64, 64, 1, 3),     # 70 KiB of shared memory: three blocks (12 warps) per SM
    "64m2": (64, 64, 2, 2),     # 128 rows per block: each K/V fragment feeds two mmas (half the shared reads)
    "128m1": (128, 32, 1, 2),   # 32-key tiles keep wide heads at 67 KiB
}
TF32_MT_D64 = 1       # m16-tiles per warp at head dims <= 64 (flash_tf32_m1 / _m2 pin it); see BENCHMARKS.md
TF32_ROUND_KV = True  # K and V rounded to TF32 (flash_tf32_trunc: truncated)
TACTICS = ("flash_tf32", "flash_tf32_m1", "flash_tf32_m2", "flash_tf32_trunc")


def _entry_name(variant: str, rk: int, cb: int) -> str:
    return f"fuser_attn_tf{variant}{'' if rk else 't'}{'cb' if cb else ''}_f32"


def entries_source() -> str:
    out = []
    for name, (hd, bc, mt, minb) in TF_VARIANTS.items():
        sdm, sbr = (64, 64) if hd == 64 else (128, 32)
        for rk in (1, 0):
            for cb in (0, 1):
                out.append(f"FUSER_ATTN_TF32({_entry_name(name, rk, cb)}, {hd}, {bc}, {mt}, {rk}, {cb}, {minb}, "
                           f"{sdm}, {sbr})\n")
    return "".join(out)


ENTRIES = entries_source()
VARIANTS: list[str] = [_entry_name(n, rk, cb) for n in TF_VARIANTS for rk in (1, 0) for cb in (0, 1)]


def source_for(common: str) -> str:
    """The module a runner compiles: attention's common code, this tactic's kernel and entries (fp32 only)."""
    return common + SOURCE + ENTRY_MACROS + ENTRIES


def smem_bytes(variant: str) -> int:
    hd, bc, _, _ = TF_VARIANTS[variant]
    return 2 * bc * ((hd + 8) + (hd + 4) + 1) * 4


def supported(backend_name: str, fp32: bool, d: int, dv: int, aligned: bool) -> bool:
    """Whether flash_tf32 takes this case: NVIDIA, fp32 tensors, head dims up to 128 in multiples of 8, 16-byte
    aligned rows. Every score term and causal are fine."""
    return (backend_name == "cuda" and fp32 and 0 < d <= 128 and 0 < dv <= 128 and d % 8 == 0 and dv % 8 == 0
            and aligned)


def plan(d: int, dv: int, colbias: bool, variant: str = "") -> dict:
    """The launch plan: ``variant`` is a tactic's suffix ('' | 'm1' | 'm2' | 'trunc'); ``colbias``: one additive
    term constant along the query axis (a key-padding mask), which has kernels of its own."""
    if variant not in ("", "m1", "m2", "trunc"):
        raise ValueError(f"unknown flash_tf32 variant {variant!r}; known: m1, m2, trunc")
    if max(d, dv) > 64:
        name = "128m1"
    else:
        name = f"64m{variant[1] if variant in ('m1', 'm2') else TF32_MT_D64}"
    rk = 0 if variant == "trunc" else int(TF32_ROUND_KV)
    fam = _entry_name(name, rk, int(colbias))[len("fuser_attn_"):-len("_f32")]
    return {"tactic": "flash_tf32", "family": fam, "threads": 128, "rows": 16 * 4 * TF_VARIANTS[name][2],
            "smem": smem_bytes(name)}
