"""Attention's ``flash_wgmma`` tactic: FlashAttention's forward on Hopper's warpgroup MMA (``wgmma``, sm_90a only).

Part of the attention family (kernels/attention.py owns the launch contract, the numpy reference and the runner);
this module holds the device source of the tactic, its entry points and its launch rule, kept apart because
the code is NVIDIA-``sm_90a``-specific and compiles as its own module for that arch-specific target (NVRTC
``--gpu-architecture=sm_90a``: ``wgmma`` does not exist in plain ``sm_90`` code).

The kernel (fp16/bf16, head dims D, Dv <= 64 in multiples of 8, no score terms; causal or not):

- a block is NWG consumer warpgroups of 128 threads, each owning 64 query rows; no producer warp: every thread
  issues ``cp.async`` copies of the next K/V tile (16-byte chunks) while the tensor cores work on this one;
- Q, K and V tiles live in shared memory in the 128-byte swizzle layout ``wgmma`` reads through a matrix
  descriptor: rows of 64 halves (128 bytes), 16-byte chunk c of row r stored at chunk c ^ (r % 8), tiles
  1024-byte aligned (the swizzle is a function of the address bits, so a tile must start on a pattern);
- S = Q·Kᵀ: ``wgmma.m64nBCk16``, four k-steps of 16 over D = 64, fp32 accumulators; K K-major from shared
  memory (a k-step is a 32-byte step of the descriptor's start address inside the swizzled rows); Q either from
  shared memory the same way or (QR) from registers, its A-fragments loaded once with ``ldmatrix`` (half the
  shared-memory reads of this GEMM);
- the online softmax runs on the accumulators (the m64nN accumulator layout gives each thread two rows, g and
  g + 8 of its warp's 16, spread over a quad: the row max is two xor-shuffles, the row sums stay per thread
  until the end), exp2 with the scale and log2(e) folded into one FFMA on full tiles, -inf safe; the reference
  max moves only when a row's max passes it by more than 8 (log2 units), so O's rescale is almost always
  skipped after the first tiles (FlashAttention-4's conditional rescaling);
- P is converted to fp16/bf16 in registers straight into ``wgmma``'s A-register fragments (the accumulator
  layout of S is the A layout of P, 16 keys per k-step) and O += P·V runs with V from shared memory through a
  descriptor with the transpose bit (V's rows are keys, so V is the MN-major B operand; same swizzled layout
  as K);
- the two GEMMs of consecutive tiles overlap inside a warpgroup (FlashAttention-3's intra-warpgroup
  pipelining): iteration kt issues S(kt) = Q·K(kt)ᵀ and then O += P(kt-1)·V(kt-1), waits for S only, runs
  tile kt's softmax while the tensor cores do P·V, then waits for O before rescaling it. K/V go three stages
  deep (V(kt-1) is still read while tile kt+1 lands);
- the epilogue multiplies O by one reciprocal of l per row, packs it into the warpgroup's rows of Q's shared tile
  (swizzled like the inputs) and stores whole 16-byte chunks, 8 threads to a 128-byte row: the per-element
  division and 4-byte stores scattered over 8 rows it replaced took 18% of a block at S=512
  (``bench/profile_attention.py phases``).

Two ptxas behaviours shape the loop (checked in the SASS, `nvdisasm`): it schedules the wgmma wait of the P·V as
early as its basic block allows, above the softmax's exponentials (so the overlap above silently vanished), which
a branch it cannot resolve around the wait prevents; and it serialises wgmmas when the compiler's own code writes
a wgmma's registers between its fence and wait, which empty "+r"/"+f" asm statements around the fences prevent.

Tried on H200 and dropped (BENCHMARKS.md, "flash_wgmma"): a non-pipelined loop (S, softmax, P·V in turn) was
slower, and with Q in registers it computed wrong results (not understood; gone with the loop); a quarter of the
exponentials on the FMA pipe (the special-function unit is not the limit, issue slots are) was slower; 128-key
tiles (register-bound to one block per SM) and 3 warpgroups per block were slower than 2 warpgroups on 64-key
tiles. For the S=512 tail (bench/results/2026-11-21_attn_s512_notes.md): persistent blocks (the next tile's loads
under the current one's last key tile) lost to the hardware's block placement, and blocks of two 256-thread
sub-blocks splitting the last wave's tiles in shared memory ran every tile 25% slower; one wave of "triple" blocks
(a pair tile, then a 64-row single whose keys the two warpgroups split) ran no faster than two waves (the loop is
latency-bound, not tail-bound; BENCHMARKS.md, "Triple blocks"); stream-K (every block an equal range of (query
tile, key tile) iterations) paid ~4 µs per query tile started, 1.7x as many of them; none is in the tree.

Every other case (terms, wider heads, other archs, AMD) is not this tactic: the launch rule falls back to
``flash_mma``. On anything but an ``sm_90a`` compile the entry points are stubs (a trap on NVIDIA, empty on AMD),
so the family's full SOURCE still compiles for sm_80/sm_90/gfx90a/gfx1030 and the CPU emulator never runs them.
"""

from __future__ import annotations


def _wgmma_wrappers() -> str:
    """Inline-PTX wrappers of the wgmma forms the kernel uses, generated (an m64nN accumulator is N/2 registers
    per thread; writing 64-operand asm statements by hand invites typos):

    - ``fuser_wgmma_ss<BF16>(d[N/2], desc_a, desc_b, accumulate)``: A and B from shared memory, both K-major;
    - ``fuser_wgmma_rs<BF16, TB>(d[N/2], a[4], desc_b, accumulate)``: A from registers; B K-major (TB = 0) or
      MN-major (TB = 1, the transpose bit).

    ``accumulate`` = 0 overwrites D (the scale-d predicate), else D += A·B.
    """
    out = []
    for n in (64, 128):
        nr = n // 2
        dl = ", ".join(f"%{i}" for i in range(nr))
        douts = ", ".join(f'"+f"(d[{i}])' for i in range(nr))
        for form in ("ss", "rs"):
            branches = []
            for ty in ("bf16", "f16"):
                if form == "ss":
                    body = (f"setp.ne.b32 p, %{nr + 2}, 0;\\n"
                            f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ty}.{ty} {{{dl}}}, %{nr}, %{nr + 1}, "
                            f"p, 1, 1, 0, 0;\\n")
                    ins = '"l"(da), "l"(db), "r"(acc)'
                else:
                    body = (f"setp.ne.b32 p, %{nr + 5}, 0;\\n"
                            f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ty}.{ty} {{{dl}}}, "
                            f"{{%{nr}, %{nr + 1}, %{nr + 2}, %{nr + 3}}}, %{nr + 4}, p, 1, 1, %{nr + 6};\\n")
                    ins = '"r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc), "n"(TB)'
                branches.append(f'        asm volatile("{{\\n.reg .pred p;\\n{body}}}\\n"\n'
                                f"                     : {douts}\n                     : {ins});")
            if form == "ss":
                head = f"template <int BF16>\nFUSER_INLINE void fuser_wgmma_ss(float (&d)[{nr}], fuser_u64 da, " \
                       "fuser_u64 db, int acc) {\n"
            else:
                head = f"template <int BF16, int TB>\nFUSER_INLINE void fuser_wgmma_rs(float (&d)[{nr}], " \
                       "const fuser_u32 (&a)[4], fuser_u64 db, int acc) {\n"
            out.append(f"{head}    if (BF16)\n{branches[0]}\n    else\n{branches[1]}\n}}\n")
    return "".join(out)


# The device code. Needs attention's COMMON before it (fuser_attn_params, fuser_exp2, fuser_attn_inv, ...).
SOURCE = r"""
// ============================== flash_wgmma: warpgroup MMA (NVIDIA sm_90a) ==============================
#if defined(FUSER_CUDA) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
""" + _wgmma_wrappers() + r"""
FUSER_INLINE fuser_u32 fuser_wg_smem_u32(const void* ptr) {
    fuser_u32 r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(ptr));
    return r;
}
FUSER_INLINE void fuser_wg_cp16(fuser_u32 dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(bytes) : "memory");
}
FUSER_INLINE void fuser_wg_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> FUSER_INLINE void fuser_wg_cp_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }
// cp.async writes shared memory through the generic proxy, wgmma reads it through the async proxy: each writer
// fences its completed copies into the async proxy before the barrier that publishes them.
FUSER_INLINE void fuser_wg_proxy_fence() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
FUSER_INLINE void fuser_wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
FUSER_INLINE void fuser_wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> FUSER_INLINE void fuser_wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(N) : "memory");
}
// wgmma reads and writes its registers asynchronously, between wgmma.fence and the wait: an empty asm that
// "modifies" each register pins the compiler's own reads after the wait and its writes (O's rescale, P's pack)
// before the fence. Without it ptxas finds them inside the pipeline stage and serialises the wgmmas.
template <int N> FUSER_INLINE void fuser_wg_keep(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i]) :: "memory");
}
template <int N, int M> FUSER_INLINE void fuser_wg_keep(fuser_u32 (&r)[N][M]) {
#pragma unroll
    for (int i = 0; i < N; ++i)
#pragma unroll
        for (int j = 0; j < M; ++j) asm volatile("" : "+r"(r[i][j]) :: "memory");
}
// Warpgroup wg's own barrier (ids 1..3, immediate: with the id in a register ptxas reserves all 16 barriers).
FUSER_INLINE void fuser_wg_bar(int wg) {
    if (wg == 0) asm volatile("bar.sync 1, 128;" ::: "memory");
    else if (wg == 1) asm volatile("bar.sync 2, 128;" ::: "memory");
    else asm volatile("bar.sync 3, 128;" ::: "memory");
}
template <int BF16> FUSER_INLINE fuser_u32 fuser_wg_pack2(float lo, float hi) {
    fuser_u32 r;
    if (BF16) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// Timeline probe (bench/profile_attention.py trace): only where FUSER_WG_TRACE is defined (the runners' builds have
// none of it), thread 0 of each block writes 4 words at p.ws + 32 * (linear block index): SM id, start and end
// (%globaltimer, ns; the end after the output stores are issued), a fourth word left for a second end.
#ifdef FUSER_WG_TRACE
FUSER_INLINE void fuser_wg_trace(const fuser_attn_params& p, int slot) {
    if (!p.ws) return;
    const unsigned int blk = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned long long* r = reinterpret_cast<unsigned long long*>(p.ws) + 4ull * blk;
    unsigned long long now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    if (slot == 1) {
        unsigned int sm;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
        r[0] = sm;
    }
    r[slot] = now;
}
#define FUSER_WG_TRACE_AT(cond, slot) do { if (cond) fuser_wg_trace(p, slot); } while (0)
#else
#define FUSER_WG_TRACE_AT(cond, slot) do { } while (0)
#endif

// A shared-memory matrix descriptor: start address, leading and stride byte offsets (each >> 4, 14 bits),
// layout 1 = 128-byte swizzle (bits 62-63), base offset 0 (tiles start 1024-byte aligned). K-major operands
// (Q, K): SBO = 1024 bytes between 8-row groups, LBO unused. MN-major V: SBO = 1024 between 8-key groups,
// LBO = bytes between 64-column blocks (one block at Dv <= 64: unused).
FUSER_INLINE fuser_u64 fuser_wg_desc(fuser_u32 addr, fuser_u32 lbo, fuser_u32 sbo) {
    return (fuser_u64)((addr & 0x3ffffu) >> 4) | ((fuser_u64)(lbo >> 4) << 16) | ((fuser_u64)(sbo >> 4) << 32) |
           (1ull << 62);
}

// ROWS rows of 64 halves (128 bytes; columns past the tensor's width and rows past rows_left zero-filled) into a
// swizzled tile at dst, by NT threads: each on a fixed 16-byte column (tid % 8) and every NT/8-th row, so the
// swizzle term (row % 8) is per-thread constant and a tile costs a few adds per chunk.
template <int ROWS, int NT>
FUSER_INLINE void fuser_wg_tile(fuser_u32 dst, const unsigned short* src, const unsigned short* any, fuser_i64 ld,
                                int rows_left, bool col_ok, int tid) {
    enum { RPP = NT / 8, PASSES = (ROWS + RPP - 1) / RPP };
    const int lr = tid >> 3, lc = tid & 7;
    const fuser_u32 d0 = dst + lr * 128 + ((lc ^ (lr & 7)) << 4);
    const unsigned short* s0 = src + (fuser_i64)lr * ld + lc * 8;
#pragma unroll
    for (int i = 0; i < PASSES; ++i) {
        if (ROWS % RPP == 0 || lr + i * RPP < ROWS) {
            const bool ok = col_ok && lr + i * RPP < rows_left;
            fuser_wg_cp16(d0 + i * RPP * 128, ok ? (const void*)(s0 + (fuser_i64)(i * RPP) * ld) : (const void*)any,
                          ok ? 16 : 0);
        }
    }
}

// S = Q·Kᵀ for one tile, four k-steps of 16 over D = 64 (a 32-byte step inside the swizzled 128-byte rows is +2
// on a descriptor's start-address field); the first step overwrites the accumulators. QR: Q from registers (its
// A-fragments, loaded once), else from shared memory through a descriptor like K.
template <int BF16, int QR, int NR>
FUSER_INLINE void fuser_wg_qk(float (&s)[NR], const fuser_u32 (&qf)[4][4], fuser_u64 dq, fuser_u64 dk) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        if (QR) fuser_wgmma_rs<BF16, 0>(s, qf[kk], dk + 2 * kk, kk > 0);
        else fuser_wgmma_ss<BF16>(s, dq + 2 * kk, dk + 2 * kk, kk > 0);
    }
}

// O += P·V for one tile: P's A-fragments (16 keys per k-step), V's k-step kk is 16 rows = 2048 bytes further.
template <int BF16, int KS>
FUSER_INLINE void fuser_wg_pv(float (&o)[32], const fuser_u32 (&pa)[KS][4], fuser_u64 dv) {
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) fuser_wgmma_rs<BF16, 1>(o, pa[kk], dv + (fuser_u64)(kk * 128), 1);
}

// One tile of the online softmax on the S accumulators (NN chunks of 8 keys: element 4n + 2hr + e is row
// row0 + 8hr, key k0 + 8n + 2t + e): raw dot products become unnormalised probabilities 2^(x - m) against a
// reference max m per row (log2 units). A full tile (every key valid and visible) with a positive scale leaves
// the scale to the exponent's FFMA (max on raw dot products; one FFMA per score); other tiles scale and mask
// first. m moves only when a row's max passes it by more than 8 (P stays <= 2^8, fine in fp16/bf16 and for
// the fp32 sums): after the first tiles O's rescale is then almost always skipped (the decision is warp-wide,
// as O's fragment spans the warp). Returns whether O must be scaled by alpha (after its P·V has landed).
// l_r holds this thread's partial row sums (its two columns of each chunk), reduced over the quad at the end.
template <int NN>
FUSER_INLINE bool fuser_wg_softmax(float (&s)[NN * 4], float (&m_r)[2], float (&l_r)[2], float (&alpha)[2],
                                   bool full, float sl, int causal, int skv, int row0, int k0, int t) {
    const bool fold = full && sl > 0.0f;
    float sc = sl;
    if (!fold) {
        sc = 1.0f;
#pragma unroll
        for (int n = 0; n < NN; ++n)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int j = k0 + 8 * n + 2 * t + (i & 1), row = row0 + 8 * (i >> 1);
                s[4 * n + i] = (j >= skv || (causal && j > row)) ? FUSER_NEG_INF : s[4 * n + i] * sl;
            }
    }
    float mx[2];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        float mq[NN];
#pragma unroll
        for (int n = 0; n < NN; ++n) mq[n] = fmaxf(s[4 * n + 2 * hr], s[4 * n + 2 * hr + 1]);
#pragma unroll
        for (int w = 1; w < NN; w *= 2)
#pragma unroll
            for (int n = 0; n + w < NN; n += 2 * w) mq[n] = fmaxf(mq[n], mq[n + w]);
        mx[hr] = mq[0];
    }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        mx[hr] = fmaxf(mx[hr], fuser_shfl_xor(mx[hr], 1));
        mx[hr] = fmaxf(mx[hr], fuser_shfl_xor(mx[hr], 2)) * sc;
    }
    const bool grow = mx[0] > m_r[0] + 8.0f || mx[1] > m_r[1] + 8.0f;
    const bool resc = __any_sync(0xffffffffu, grow);
    alpha[0] = alpha[1] = 1.0f;
    if (resc) {
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const float mn = fmaxf(m_r[hr], mx[hr]);
            alpha[hr] = mn == FUSER_NEG_INF ? 1.0f : fuser_exp2(m_r[hr] - mn);
            l_r[hr] *= alpha[hr];
            m_r[hr] = mn;
        }
    }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const float mu = m_r[hr] == FUSER_NEG_INF ? 0.0f : m_r[hr];
        float rs0 = 0.0f, rs1 = 0.0f;
#pragma unroll
        for (int n = 0; n < NN; ++n) {
            const float p0 = fuser_exp2(fmaf(s[4 * n + 2 * hr], sc, -mu));
            const float p1 = fuser_exp2(fmaf(s[4 * n + 2 * hr + 1], sc, -mu));
            s[4 * n + 2 * hr] = p0;
            s[4 * n + 2 * hr + 1] = p1;
            rs0 += p0;
            rs1 += p1;
        }
        l_r[hr] += rs0 + rs1;
    }
    return resc;
}

// The probabilities as wgmma A-fragments: k-step kk covers keys 16kk..16kk+15, i.e. accumulator chunks 2kk
// (registers a0: row g, a1: row g+8) and 2kk+1 (a2, a3).
template <int BF16, int NN>
FUSER_INLINE void fuser_wg_pack(fuser_u32 (&pa)[NN / 2][4], const float (&s)[NN * 4]) {
#pragma unroll
    for (int kk = 0; kk < NN / 2; ++kk)
#pragma unroll
        for (int i = 0; i < 4; ++i) pa[kk][i] = fuser_wg_pack2<BF16>(s[8 * kk + 2 * i], s[8 * kk + 2 * i + 1]);
}

FUSER_INLINE void fuser_wg_rescale(float (&o)[32], const float (&alpha)[2]) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        o[4 * j] *= alpha[0]; o[4 * j + 1] *= alpha[0];
        o[4 * j + 2] *= alpha[1]; o[4 * j + 3] *= alpha[1];
    }
}

// This thread's share of one K/V tile load: its 16-byte column of rows lr, lr + NT/8, ... of the tile (the swizzle
// term lr % 8 is fixed per thread, so destinations are a base plus compile-time steps). kp/vp point at this thread's
// first row of the tile, kst/vst are the element steps between its rows. Tiles wholly inside the keys (all but the
// last) take no row checks; rows past rows_left (and columns past the head dim) are zero-filled, read from the
// head's first row (k/v) instead.
template <int BC, int NT>
FUSER_INLINE void fuser_wg_kv(fuser_u32 kdst, fuser_u32 vdst, const unsigned short* kp, const unsigned short* vp,
                              fuser_i64 kst, fuser_i64 vst, const unsigned short* k, const unsigned short* v,
                              int rows_left, bool dok, bool vok) {
    enum { RPP = NT / 8, PASSES = (BC + RPP - 1) / RPP };
    const int lr = threadIdx.x >> 3;
    if (rows_left >= BC) {
#pragma unroll
        for (int i = 0; i < PASSES; ++i) {
            if (BC % RPP == 0 || lr + i * RPP < BC) {
                fuser_wg_cp16(kdst + i * RPP * 128, dok ? kp + i * kst : k, dok ? 16 : 0);
                fuser_wg_cp16(vdst + i * RPP * 128, vok ? vp + i * vst : v, vok ? 16 : 0);
            }
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < PASSES; ++i) {
        if (BC % RPP == 0 || lr + i * RPP < BC) {
            const bool in = i * RPP < rows_left, kin = in && dok, vin = in && vok;
            fuser_wg_cp16(kdst + i * RPP * 128, kin ? kp + i * kst : k, kin ? 16 : 0);
            fuser_wg_cp16(vdst + i * RPP * 128, vin ? vp + i * vst : v, vin ? 16 : 0);
        }
    }
}

// Split tiles (the grid's tail, SPLIT entries): each half writes its partial state (O unnormalised against its
// reference max m, m and the per-thread row sums l) to a module-global workspace, in this thread's own fragment
// layout (the other half's thread tid holds the same rows and columns), then counts itself in on the tile's
// counter; the second to arrive reads the other half's state, merges it into its registers and stores the tile
// (and resets the counter for the next launch); the first returns. No block waits for another.
// Launches of one module must therefore not overlap in time (one stream, as the runner uses it).
#define FUSER_WG_SPLIT_MAXT 144  // tail tiles per launch (the launch rule keeps T <= SMs <= 132 on sm_90 parts)
__device__ float4 fuser_wg_split_ws[FUSER_WG_SPLIT_MAXT * 2 * 9 * 256];
__device__ unsigned int fuser_wg_split_cnt[FUSER_WG_SPLIT_MAXT] = {0};
// Returns whether this block stores the tile: a whole tile's block (no split) or the second half to arrive. The
// block's place (recomputed here, not held in registers through the loop): blocks n - T.. of the n + T are halves.
// The flag lives in the first word of dynamic shared memory (the alignment pad or Q's tile, both unused by now).
template <int BR, int NT>
FUSER_INLINE bool fuser_wg_split_combine(float (&oacc)[32], float (&m_r)[2], float (&l_r)[2],
                                         const fuser_attn_params& p, unsigned char* smem) {
    const int nfull = 2 * ((p.Sq + BR - 1) / BR) * p.H * p.B - (int)gridDim.x, j = (int)blockIdx.x - nfull;
    if (j < 0) return true;
    const int ti = j >> 1, half = j & 1, tid = threadIdx.x;
    volatile unsigned int* last = reinterpret_cast<volatile unsigned int*>(smem);
    float4* mine = fuser_wg_split_ws + (fuser_i64)(ti * 2 + half) * (9 * NT) + tid;
#pragma unroll
    for (int j = 0; j < 8; ++j)
        __stcg(mine + j * NT, make_float4(oacc[4 * j], oacc[4 * j + 1], oacc[4 * j + 2], oacc[4 * j + 3]));
    __stcg(mine + 8 * NT, make_float4(m_r[0], m_r[1], l_r[0], l_r[1]));
    // the block's stores, then one thread's release-acquire arrival at GPU scope (a barrier orders the block's
    // stores before it, the release is cumulative); the barrier after it orders the second block's loads after
    // its acquire (CUTLASS's semaphore pattern; no sequentially consistent fence per thread)
    __syncthreads();
    if (tid == 0) {
        unsigned int old;
        asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(old) : "l"(fuser_wg_split_cnt + ti)
                     : "memory");
        if (old) fuser_wg_split_cnt[ti] = 0u;  // both halves in: reset for the next launch
        *last = old;
    }
    __syncthreads();
    if (!*last) return false;
    const float4* other = fuser_wg_split_ws + (fuser_i64)(ti * 2 + (half ^ 1)) * (9 * NT) + tid;
    const float4 st = __ldcg(other + 8 * NT);
    const float mo[2] = {st.x, st.y}, lo[2] = {st.z, st.w};
    float as[2], ao[2];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        const float mn = fmaxf(m_r[hr], mo[hr]);
        as[hr] = m_r[hr] == FUSER_NEG_INF ? 0.0f : fuser_exp2(m_r[hr] - mn);
        ao[hr] = mo[hr] == FUSER_NEG_INF ? 0.0f : fuser_exp2(mo[hr] - mn);
        l_r[hr] = l_r[hr] * as[hr] + lo[hr] * ao[hr];
        m_r[hr] = mn;
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        const float4 x = __ldcg(other + j * NT);
        oacc[4 * j] = fmaf(oacc[4 * j], as[0], x.x * ao[0]);
        oacc[4 * j + 1] = fmaf(oacc[4 * j + 1], as[0], x.y * ao[0]);
        oacc[4 * j + 2] = fmaf(oacc[4 * j + 2], as[1], x.z * ao[1]);
        oacc[4 * j + 3] = fmaf(oacc[4 * j + 3], as[1], x.w * ao[1]);
    }
    return true;
}

// The block's query tile (mb, head h, batch b) and, for split tiles, which half of the keys it takes (else -1).
// SPLIT: a 1-D grid of n + T blocks over the n query tiles (tile = (b, h, mb), mb fastest): the first n - T
// blocks take a whole tile each, then two blocks per tile for the last T tiles (the grid's tail), each half of
// the key tiles (half 0 the first); the second to finish combines (fuser_wg_split_combine).
template <int BR, int SPLIT>
FUSER_INLINE void fuser_wg_place(const fuser_attn_params& p, unsigned int cta, int& mb, int& b, int& h, int& half) {
    half = -1;
    if (SPLIT) {
        const int nq = (p.Sq + BR - 1) / BR, n = nq * p.H * p.B, nfull = 2 * n - (int)gridDim.x;
        int tile = (int)cta;
        if (tile >= nfull) {
            half = (tile - nfull) & 1;
            tile = nfull + ((tile - nfull) >> 1);
        }
        mb = tile % nq;
        h = (tile / nq) % p.H;
        b = tile / (nq * p.H);
    } else {
        // causal: the heaviest query blocks (the last) first, so the short ones fill the tail of the grid
        mb = p.causal ? (int)gridDim.x - 1 - (int)cta : (int)cta;
        b = blockIdx.z;
        h = blockIdx.y;
    }
}

// Iteration kt of the pipelined loop issues S(kt) = Q·K(kt)ᵀ and then O += P(kt-1)·V(kt-1), waits for S only,
// runs tile kt's softmax while the tensor cores do P·V, then waits for O before rescaling it and packing P(kt).
// K/V go three stages deep: tile kt+1 lands (issued at the top of iteration kt) in the stage of tile kt-2, free
// once every warpgroup passed the barrier (each waited for P(kt-2)·V(kt-2) in iteration kt-1).
template <int BF16, int NWG, int BC, int QR, int SPLIT, int PF>
FUSER_INLINE void fuser_attn_wgmma(const fuser_attn_params& p) {
    enum { NT = 128 * NWG, BR = 64 * NWG, NS = PF + 2, NN = BC / 8, KS = BC / 16, TILE = BC * 128 };
    extern __shared__ __align__(1024) unsigned char fuser_wg_smem[];
    FUSER_WG_TRACE_AT(threadIdx.x == 0, 1);
    // Q [BR][64], then NS stages of K [BC][64], then NS of V; the host adds 1024 bytes for this alignment
    const fuser_u32 s_q = (fuser_wg_smem_u32(fuser_wg_smem) + 1023u) & ~1023u;
    const fuser_u32 s_k = s_q + BR * 128, s_v = s_k + NS * TILE;
    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, t = lane & 3;
    int mb, b, h, half;
    fuser_wg_place<BR, SPLIT>(p, blockIdx.x, mb, b, h, half);
    const int q0 = mb * BR;
    const int hk = h / (p.H / p.Hkv);
    const unsigned short* q = (const unsigned short*)p.q + (fuser_i64)b * p.q_sb + (fuser_i64)h * p.q_sh;
    const unsigned short* k = (const unsigned short*)p.k + (fuser_i64)b * p.k_sb + (fuser_i64)hk * p.k_sh;
    const unsigned short* v = (const unsigned short*)p.v + (fuser_i64)b * p.v_sb + (fuser_i64)hk * p.v_sh;
    const int lr = tid >> 3, lc = tid & 7;
    const bool dok = lc * 8 < p.D, vok = lc * 8 < p.Dv;
    int ntiles = (p.Skv + BC - 1) / BC;
    if (p.causal) {
        const int last = (q0 + BR < p.Sq ? q0 + BR : p.Sq) - 1;
        const int lim = last / BC + 1;
        ntiles = ntiles < lim ? ntiles : lim;
    }
    // this block's key tiles [kb, ke) (absolute indices): a split tile's halves take [0, mid) and [mid, ntiles)
    int kb = 0, ke = ntiles;
    if (SPLIT && half >= 0) {
        const int mid = ntiles >> 1;
        kb = half ? mid : 0;
        ke = half ? ntiles : mid;
    }
    const int kbase = kb * BC;  // keys before this block's first tile
    // this thread's K/V load slots: stage-0 destinations, its first row of tile 0 (a tile is BC rows further), the
    // steps between its rows
    const fuser_u32 kd0 = s_k + lr * 128 + ((lc ^ (lr & 7)) << 4), vd0 = kd0 + NS * TILE;
    const unsigned short* kp = k + (fuser_i64)(lr + kbase) * p.k_ss + lc * 8;
    const unsigned short* vp = v + (fuser_i64)(lr + kbase) * p.v_ss + lc * 8;
    const fuser_i64 kst = (NT / 8) * p.k_ss, vst = (NT / 8) * p.v_ss, ktile = BC * p.k_ss, vtile = BC * p.v_ss;
    fuser_wg_tile<BR, NT>(s_q, q + (fuser_i64)q0 * p.q_ss, q, p.q_ss, p.Sq - q0, dok, tid);
    if (ke > kb) fuser_wg_kv<BC, NT>(kd0, vd0, kp, vp, kst, vst, k, v, p.Skv - kbase - lr, dok, vok);
    fuser_wg_cp_commit();
    kp += ktile;
    vp += vtile;
    int rows_left = p.Skv - kbase - BC - lr;  // of the next tile to load (kb + 1), from this thread's first row
    if (PF == 2) {  // two tiles ahead: tile kb + 1 goes now too, in a commit group of its own
        if (kb + 1 < ke) fuser_wg_kv<BC, NT>(kd0 + TILE, vd0 + TILE, kp, vp, kst, vst, k, v, rows_left, dok, vok);
        fuser_wg_cp_commit();
        kp += ktile;
        vp += vtile;
        rows_left -= BC;
    }
    const int qw0 = q0 + wg * 64;                 // this warpgroup's first query row
    const int row0 = qw0 + warp * 16 + g;         // this thread's rows: row0 and row0 + 8
    const float sl = p.scale * FUSER_LOG2E;
    const fuser_u32 zero = (fuser_u32)p.Skv >> 31;  // 0 (Skv >= 0), not known to the compiler: see the P·V wait
    const fuser_u64 dq = fuser_wg_desc(s_q + wg * 64 * 128, 16, 1024);
    const fuser_u64 dk0 = fuser_wg_desc(s_k, 16, 1024), dv0 = fuser_wg_desc(s_v, TILE, 1024);
    float oacc[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) oacc[i] = 0.0f;
    float m_r[2] = {FUSER_NEG_INF, FUSER_NEG_INF}, l_r[2] = {0.0f, 0.0f};
    if (ke > kb) {
        fuser_u32 qf[4][4];
        fuser_u32 pa[KS][4];
        // tile 0: S and its softmax only; its P·V is issued with tile 1's S
        fuser_wg_cp_wait<PF - 1>();  // Q and tile kb landed (tile kb + 1 may still be in flight when PF = 2)
        fuser_wg_proxy_fence();
        __syncthreads();
        if (kb + PF < ke)
            fuser_wg_kv<BC, NT>(kd0 + PF * TILE, vd0 + PF * TILE, kp, vp, kst, vst, k, v, rows_left, dok, vok);
        fuser_wg_cp_commit();
        if (QR) {  // Q's A-fragments once: ldmatrix.x4 of rows 16w..16w+15, 16-byte chunks 2kk and 2kk+1 (swizzled)
            const int r = wg * 64 + warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                const fuser_u32 addr = s_q + r * 128 + (((2 * kk + (lane >> 4)) ^ (lane & 7)) << 4);
                asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                             : "=r"(qf[kk][0]), "=r"(qf[kk][1]), "=r"(qf[kk][2]), "=r"(qf[kk][3]) : "r"(addr)
                             : "memory");
            }
        }
        {
            float s[NN * 4];
            fuser_wg_fence();
            fuser_wg_qk<BF16, QR>(s, qf, dq, dk0);
            fuser_wg_commit();
            fuser_wg_wait<0>();
            fuser_wg_keep(s);
            const bool full = kbase + BC <= p.Skv && (!p.causal || kbase + BC - 1 <= qw0);
            float alpha[2];
            fuser_wg_softmax<NN>(s, m_r, l_r, alpha, full, sl, p.causal, p.Skv, row0, kbase, t);
            fuser_wg_pack<BF16, NN>(pa, s);
        }
        int sp = 0, st = 1, sn = PF + 1;  // stages of tiles kt-1, kt and kt+PF (that of kt-2)
        for (int kt = kb + 1; kt < ke; ++kt) {
            const int k0 = kt * BC;
            fuser_wg_cp_wait<PF - 1>();  // tile kt landed
            fuser_wg_proxy_fence();
            __syncthreads();
            kp += ktile;
            vp += vtile;
            rows_left -= BC;
            if (kt + PF < ke)
                fuser_wg_kv<BC, NT>(kd0 + sn * TILE, vd0 + sn * TILE, kp, vp, kst, vst, k, v, rows_left, dok, vok);
            fuser_wg_cp_commit();
            float s[NN * 4];
            fuser_wg_keep(oacc);
            fuser_wg_keep(pa);
            fuser_wg_fence();
            fuser_wg_qk<BF16, QR>(s, qf, dq, dk0 + (fuser_u64)(st * (TILE >> 4)));
            fuser_wg_commit();
            fuser_wg_pv<BF16, KS>(oacc, pa, dv0 + (fuser_u64)(sp * (TILE >> 4)));
            fuser_wg_commit();
            fuser_wg_wait<1>();  // S(kt) done; P(kt-1)·V(kt-1) may still run
            fuser_wg_keep(s);
            const bool full = k0 + BC <= p.Skv && (!p.causal || k0 + BC - 1 <= qw0);
            float alpha[2];
            const bool resc = fuser_wg_softmax<NN>(s, m_r, l_r, alpha, full, sl, p.causal, p.Skv, row0, k0, t);
            fuser_wg_keep(s);  // the exponentials before the wait (left alone, the compiler sinks them to their use)
            // ptxas schedules within a basic block and hoists a wait above the independent exponentials of its block
            // (the P·V overlap is then lost): a branch it cannot resolve (zero is 0) gives the wait a block of its own
            if (zero == 0u) fuser_wg_wait<0>();
            else fuser_wg_wait<0>();
            fuser_wg_keep(oacc);
            if (resc) fuser_wg_rescale(oacc, alpha);
            fuser_wg_pack<BF16, NN>(pa, s);
            sp = st;
            st = st == NS - 1 ? 0 : st + 1;
            sn = sn == NS - 1 ? 0 : sn + 1;
        }
        fuser_wg_keep(oacc);
        fuser_wg_keep(pa);
        fuser_wg_fence();
        fuser_wg_pv<BF16, KS>(oacc, pa, dv0 + (fuser_u64)(sp * (TILE >> 4)));
        fuser_wg_commit();
        fuser_wg_wait<0>();
        fuser_wg_keep(oacc);
    }
    if (SPLIT && !fuser_wg_split_combine<BR, NT>(oacc, m_r, l_r, p, fuser_wg_smem)) {
        FUSER_WG_TRACE_AT(threadIdx.x == 0, 2);
        return;
    }
    if (SPLIT) {  // the tile's place again, from a fresh read of the block index: not held through the loop
        unsigned int cta;
        asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(cta));
        fuser_wg_place<BR, SPLIT>(p, cta, mb, b, h, half);
    }
    // The output: O / l packed to 16 bits into this warpgroup's 64 rows of Q's tile (free now: Q's fragments are
    // in registers or its last wgmma has landed; rows of 128 bytes in the same 128-byte swizzle, so a warp's
    // 4-byte writes hit 32 banks), then stored as whole 16-byte chunks, 8 threads to a 128-byte row: coalesced
    // stores in place of 4-byte ones scattered over 8 rows per instruction. One reciprocal per row, not a
    // division per element. The warpgroup's own barrier (ids 1, 2, ...) first: the split merge's flag may sit
    // in the first word of the tile, read by every thread of the block before it goes on.
    const fuser_u32 s_o = ((fuser_wg_smem_u32(fuser_wg_smem) + 1023u) & ~1023u) + wg * 64 * 128;
    fuser_wg_bar(wg);
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
        float l = l_r[hr];
        l += fuser_shfl_xor(l, 1);
        l += fuser_shfl_xor(l, 2);
        const float inv = fuser_attn_inv(l, p.nan_zero);
        const int r = warp * 16 + g + 8 * hr;  // row in the warpgroup's 64
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const fuser_u32 v2 = fuser_wg_pack2<BF16>(oacc[4 * j + 2 * hr] * inv, oacc[4 * j + 2 * hr + 1] * inv);
            asm volatile("st.shared.b32 [%0], %1;" :: "r"(s_o + r * 128 + ((j ^ (r & 7)) << 4) + 4 * t), "r"(v2)
                         : "memory");
        }
    }
    fuser_wg_bar(wg);
    unsigned short* o = (unsigned short*)p.o + (fuser_i64)b * p.o_sb + (fuser_i64)h * p.o_sh;
    const int wt = tid & 127, c = wt & 7, qw = row0 - warp * 16 - g;  // this warpgroup's first query row
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = i * 16 + (wt >> 3), row = qw + r;
        if (row < p.Sq && c * 8 < p.Dv) {
            uint4 x;
            asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];" : "=r"(x.x), "=r"(x.y), "=r"(x.z), "=r"(x.w)
                         : "r"(s_o + r * 128 + ((c ^ (r & 7)) << 4)) : "memory");
            *reinterpret_cast<uint4*>(o + (fuser_i64)row * p.o_ss + c * 8) = x;
        }
    }
    FUSER_WG_TRACE_AT(threadIdx.x == 0, 2);
}
#endif  // sm_90a
"""

# Entry points: NWG warpgroups (64 query rows each), BC keys per tile, QR (Q from registers in S = Q·Kᵀ, else from
# shared memory), and the minimum blocks per SM the registers are held to.
ENTRY_MACROS = r"""
#if defined(FUSER_CUDA) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FUSER_ATTN_WG(NAME, BF16, NWG, BC, QR, MINB, SPLIT, PF)                                          \
    FUSER_GLOBAL void __launch_bounds__(128 * NWG, MINB) NAME(const fuser_attn_params p) {                  \
        fuser_attn_wgmma<BF16, NWG, BC, QR, SPLIT, PF>(p);                                               \
    }
#elif defined(FUSER_CUDA)
// not an sm_90a compile: wgmma does not exist here; the launch rule never picks these entries
#define FUSER_ATTN_WG(NAME, BF16, NWG, BC, QR, MINB, SPLIT, PF)                                          \
    FUSER_GLOBAL void NAME(const fuser_attn_params p) { asm volatile("trap;"); }
#else
#define FUSER_ATTN_WG(NAME, BF16, NWG, BC, QR, MINB, SPLIT, PF) FUSER_GLOBAL void NAME(const fuser_attn_params p) {}
#endif
"""

# variant -> (warpgroups, keys per tile, Q in registers, min blocks per SM, split tail, K/V tiles loaded ahead)
# (K/V stages = tiles ahead + 2: a tile's V is still read in the next iteration)
WG_VARIANTS: dict[str, tuple[int, int, int, int, int, int]] = {
    "2n64q": (2, 64, 1, 2, 0, 1),
    "2n64qs": (2, 64, 1, 2, 1, 1),
    "2n64qp": (2, 64, 1, 2, 0, 2),
    "2n64": (2, 64, 0, 2, 0, 1),
    "1n64q3": (1, 64, 1, 3, 0, 1),
    "1n64q": (1, 64, 1, 4, 0, 1),
    "3n64q": (3, 64, 1, 1, 0, 1),
}
# The launch rule's picks, from the H200 runs (BENCHMARKS.md): 128-row blocks (two warpgroups sharing K/V tiles)
# in general; 64-row blocks for causal masks, whose triangle of work balances better in small pieces.
WG_DEFAULT = "2n64q"
WG_CAUSAL = "1n64q3"
# Split tail (variant 2n64qs): where the query tiles fill whole waves of block slots (2 per SM) and then at most
# half a wave, the last wave's tiles are split over two blocks each (half the key tiles each, merged by the
# second to finish), so the tail runs as half-length blocks on every slot instead of whole blocks on a few.
# H200 (BENCHMARKS.md, 2026-11-21 split runs): B1 H12 S4096 137.6 -> 133.2 us; at S512 (8 key tiles) the halves'
# fixed costs (prologue, the partial state's round trip through L2) outweigh the tail: 26.6 -> 29.1 us. So only
# from WG_SPLIT_MIN_KEY_TILES key tiles (64 keys each) on.
WG_SPLIT = True
WG_SPLIT_VARIANT = "2n64qs"
WG_SPLIT_MIN_KEY_TILES = 64
WG_SPLIT_MAX_TILES = 144  # the device workspace's capacity (FUSER_WG_SPLIT_MAXT)


def entries_source(sfx: str) -> str:
    bf16 = 1 if sfx == "bf16" else 0
    return "".join(f"FUSER_ATTN_WG(fuser_attn_wg{v}_{sfx}, {bf16}, {', '.join(map(str, cfg))})\n"
                   for v, cfg in WG_VARIANTS.items())


def source_for(common: str, sfx: str) -> str:
    """The module a runner compiles for sm_90a: attention's common code, this tactic, one dtype's entries."""
    return common + SOURCE + ENTRY_MACROS + entries_source(sfx)


VARIANTS: list[str] = [f"fuser_attn_wg{v}_{s}" for s in ("f16", "bf16") for v in WG_VARIANTS]


def smem_bytes(variant: str) -> int:
    nwg, bc, pf = WG_VARIANTS[variant][0], WG_VARIANTS[variant][1], WG_VARIANTS[variant][5]
    return 64 * nwg * 128 + 2 * (pf + 2) * bc * 128 + 1024  # Q, pf + 2 stages of K and V, 1024 for the alignment


def supported(backend_name: str, arch: str, half: bool, d: int, dv: int, aligned: bool, nterms: int,
              skv: int = 0) -> bool:
    """Whether flash_wgmma takes this case: NVIDIA compute capability 9.0 (the sm_90a target), fp16/bf16, head dims
    up to 64 in multiples of 8, 16-byte aligned rows, no score terms (causal is fine), a head's K/V under 2^31
    elements (32-bit offsets in the loads)."""
    return (backend_name == "cuda" and arch == "sm_90" and half and 0 < d <= 64 and 0 < dv <= 64 and d % 8 == 0
            and dv % 8 == 0 and aligned and nterms == 0 and (skv + 128) * max(d, dv) < 2**31)


def split_tiles(n: int, slots: int) -> int:
    """Tail tiles to split: n query tiles over ``slots`` block slots leave a last wave of r = n mod slots tiles;
    split them where at least one whole wave runs before it and r is at most half the slots (then their 2r halves
    fit one wave)."""
    w, r = divmod(n, max(1, slots))
    return r if w >= 1 and 0 < r <= slots // 2 and r <= WG_SPLIT_MAX_TILES else 0


def plan(variant: str = "", causal: bool = False, sq: int = 0, bh: int = 0, num_sms: int = 0, skv: int = 0) -> dict:
    """The variant's launch: ``sq``, ``skv`` (query and key lengths), ``bh`` (batch x heads) and ``num_sms`` size the
    split tail.
    A split plan carries its own 1-D ``grid`` (n + T blocks for n query tiles, T of them split)."""
    v = variant or (WG_CAUSAL if causal else WG_DEFAULT)
    if v not in WG_VARIANTS:
        raise ValueError(f"unknown flash_wgmma variant {v!r}; known: {', '.join(WG_VARIANTS)}")
    nwg, _, _, minb, split, _ = WG_VARIANTS[v]
    rows = 64 * nwg
    n = -(-sq // rows) * bh
    tail = 0
    if not variant and not causal and WG_SPLIT and n and num_sms and -(-skv // 64) >= WG_SPLIT_MIN_KEY_TILES:
        tail = split_tiles(n, minb * num_sms)
        if tail:
            v = WG_SPLIT_VARIANT
    elif split:  # pinned: the rule's tail, else half the tiles (so both kinds of block run)
        tail = min(split_tiles(n, minb * num_sms) or max(1, n // 2), WG_SPLIT_MAX_TILES, n)
    out = {"tactic": "flash_wgmma", "family": f"wg{v}", "threads": 128 * nwg, "rows": rows, "smem": smem_bytes(v)}
    if WG_VARIANTS[v][4]:
        if n + tail >= 2**31:
            raise ValueError(f"flash_wgmma_{v}: {n} query tiles do not fit its 1-D grid")
        out["grid"] = (max(1, n + tail), 1, 1)
        out["split_tiles"] = tail
    return out
