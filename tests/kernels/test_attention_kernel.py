"""The attention family without a GPU: the numpy reference against a loop-by-loop definition, the parameter
block's byte layout against a C compiler's, and the Runner's launch rule and parameters on a fake backend."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fuser.kernels import attention as A
from fuser.kernels import attention_wgmma as W

from .fake_device import FakeDevice


def brute(q, k, v, scale, causal=False, terms=(), nan_zero=False):
    b, h, sq, d = q.shape
    hkv, skv, dv = k.shape[1], k.shape[2], v.shape[3]
    out = np.zeros((b, h, sq, dv))
    for bi in range(b):
        for hi in range(h):
            kh = hi // (h // hkv)
            kb = bi if k.shape[0] > 1 else 0
            for i in range(sq):
                s = np.array([float(np.dot(q[bi, hi, i], k[kb, kh, j])) * scale for j in range(skv)])
                if causal:
                    s[np.arange(skv) > i] = -np.inf
                for t in terms:
                    if t[0] == "bias":
                        s = s + np.broadcast_to(t[1], (b, h, sq, skv))[bi, hi, i]
                    elif t[0] == "mask":
                        keep = np.broadcast_to(t[1], (b, h, sq, skv))[bi, hi, i]
                        s = np.where(keep, s, float(t[2]))
                    else:
                        w = t[1]
                        s = s + np.broadcast_to(w[0, bi % w.shape[1]], (h, sq, skv))[hi, i]
                with np.errstate(invalid="ignore"):
                    p = np.exp(s - s.max())
                    p = p / p.sum()
                if nan_zero:
                    p = np.nan_to_num(p, nan=0.0)
                out[bi, hi, i] = p @ v[kb, kh]
    return out


@pytest.mark.parametrize("case", ["plain", "gqa", "mqa_batch1", "causal_cross", "terms", "window", "dead"])
def test_reference_matches_the_definition(case):
    rng = np.random.default_rng(hash(case) % 1000)
    b, h, hkv, sq, skv, d, dv = 2, 4, 4, 5, 7, 8, 6
    terms, causal, nan_zero, kb = [], False, False, b
    if case == "gqa":
        hkv = 2
    if case == "mqa_batch1":
        hkv, kb = 1, 1
    if case == "causal_cross":
        causal = True
    if case == "terms":
        terms = [("bias", rng.standard_normal((b, 1, 1, skv))),
                 ("mask", rng.random((1, 1, sq, skv)) > 0.3, np.float32(-1e4)),
                 ("bias", rng.standard_normal((h, sq, skv)))]
    if case == "window":
        terms = [("winbias", rng.standard_normal((1, 2, 1, sq, skv)))]
    if case == "dead":
        keep = np.ones((b, 1, sq, skv), bool)
        keep[1, 0, 2] = False
        terms, nan_zero = [("mask", keep, -np.inf)], True
    q = rng.standard_normal((b, h, sq, d))
    k = rng.standard_normal((kb, hkv, skv, d))
    v = rng.standard_normal((kb, hkv, skv, dv))
    got = A.reference(q, k, v, scale=0.3, causal=causal, terms=terms, nan_zero=nan_zero)
    want = brute(q, k, v, 0.3, causal, terms, nan_zero)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    if case == "dead":
        assert np.all(got[1, :, 2] == 0)


def test_fully_masked_rows_are_nan_without_the_guard():
    q = np.ones((1, 1, 2, 4))
    keep = np.array([[True, False], [False, False]]).reshape(1, 1, 2, 2)
    out = A.reference(q, q, q, terms=[("mask", keep, -np.inf)])
    assert np.isfinite(out[0, 0, 0]).all() and np.isnan(out[0, 0, 1]).all()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_parameter_block_layout_matches_c(tmp_path: Path):
    """The ctypes mirror of fuser_attn_params has the C struct's size and field offsets (what the kernel reads)."""
    src = A.COMMON[A.COMMON.index("struct fuser_attn_term {"):A.COMMON.index("// A row's term offsets")]
    prog = tmp_path / "layout.c"
    fields = [f for f, _ in A._Params._fields_]
    head = ("#include <stdio.h>\n#include <stddef.h>\ntypedef long long fuser_i64;\n"
            "typedef unsigned long long fuser_u64;\ntypedef struct fuser_attn_term fuser_attn_term;\n")
    prog.write_text(head + src + "\nint main(void) {\n"
                    "printf(\"%zu\\n\", sizeof(struct fuser_attn_params));\n"
                    + "".join(f"printf(\"%zu\\n\", offsetof(struct fuser_attn_params, {f}));\n" for f in fields)
                    + "printf(\"%zu\\n\", sizeof(struct fuser_attn_term));\nreturn 0;\n}\n")
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-x", "c", str(prog), "-o", str(exe)], check=True)
    got = [int(x) for x in subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()]
    want = [ctypes.sizeof(A._Params)] + [getattr(A._Params, f).offset for f in fields] + [ctypes.sizeof(A._Term)]
    assert got == want


class FakeCuda(FakeDevice):
    """Records what a runner would launch; compiles nothing."""

    name, arch, warp_size, num_sms = "cuda", "sm_90", 32, 132

    class _drv:  # noqa: N801 - mimics cuda.bindings.driver
        class CUfunction_attribute:  # noqa: N801
            CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
            CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT = 9

        @staticmethod
        def cuFuncSetAttribute(fn, attr, value):  # noqa: N802
            FakeCuda.opted_in.append((fn, value))
            return (0,)

    opted_in: list = []

    def function(self, family, source, entry, arch=None):
        assert entry in A.VARIANTS and (entry == "fuser_attn_softmax" or entry.rsplit("_", 1)[1] in family)
        self.compiled_for.append((entry, arch))
        return entry

    def launch(self, fn, grid, block, args, shared=0, stream=0):
        p = args.params
        self.launches.append((fn, grid, block, shared, p.q, p.term[0].ptr, p.term[0].sj, p.scale))



@pytest.mark.parametrize("dtype,d,tactic,entry,rows,smem", [
    ("float16", 64, "auto", "fuser_attn_mma64n128cb_f16", 64, 73728),   # one key-padding bias: its own kernel
    ("float16", 64, "flash_mma_n64", "fuser_attn_mma64_f16", 64, 40960),
    ("bfloat16", 32, "flash_mma_pp", "fuser_attn_mma64pp_bf16", 64, 40960),
    ("float32", 64, "flash_simt_r128", "fuser_attn_simt64r128_f32", 128, 87040),
    ("bfloat16", 128, "auto", "fuser_attn_mma128cb_bf16", 64, 81920),
    ("float16", 72, "auto", "fuser_attn_mma128cb_f16", 64, 81920),
    ("float16", 36, "auto", "fuser_attn_simtkv128r32_f16", 32, 43520),   # not a multiple of 8: CUDA cores
    ("float32", 64, "auto", "fuser_attn_simtkv128r32_f32", 32, 43520),   # <= 128 keys: all of them resident
    ("float32", 64, "flash_simt", "fuser_attn_simt64_f32", 64, 52224),
    ("float32", 96, "auto", "fuser_attn_simt128_f32", 32, 59392),
    ("float32", 256, "auto", "fuser_attn_scores_f32", 64, 0),      # past 128: the GEMM tactic
])
def test_runner_launch_rule(dtype, d, tactic, entry, rows, smem):
    be = FakeCuda()
    bias = A.TermSpec("bias", "float32", (2, 1, 1, 70))
    r = A.Runner(be, (2, 4, 65, d), (2, 2, 70, d), (2, 2, 70, d), dtype, 0.5, terms=[bias], tactic=tactic)
    assert r.output_shape == (2, 4, 65, d)
    r([1600, 3200, 4800, 6400], 8000, 7)
    fn, grid, block, shared, q, tptr, sj, scale = be.launches[0]
    assert fn == entry and block[0] == (256 if "r128" in entry else 128)
    assert q == 1600 and tptr == 6400 and sj == 1 and scale == 0.5
    if entry.startswith("fuser_attn_scores"):
        assert [x[0] for x in be.launches] == ["fuser_attn_scores_f32", "fuser_attn_softmax", "fuser_attn_pv_f32"]
        return
    assert grid == (-(-65 // rows), 4, 2) and shared == smem


def test_runner_takes_constant_terms_and_misaligned_pointers():
    be = FakeCuda()
    mask = np.ones((1, 1, 8, 8), bool)
    r = A.Runner(be, (1, 2, 8, 64), (1, 2, 8, 64), (1, 2, 8, 64), "float16",
                 terms=[A.TermSpec("mask", "bool", mask.shape, -1e4)], consts=[mask])
    r([16, 32, 48], 64)  # the constant mask was uploaded: no pointer for it at call time
    assert be.launches[-1][0] == "fuser_attn_mma64n128_f16" and be.launches[-1][5] != 0
    r([18, 32, 48], 64)  # a pointer off 16 bytes: the CUDA-core kernel
    assert be.launches[-1][0] == "fuser_attn_simt64_f16"


def test_term_strides():
    assert A.term_strides(A.TermSpec("bias", "float32", (3, 1, 1, 9)), (3, 4, 5, 9)) == ((9, 0, 0, 1), 0)
    assert A.term_strides(A.TermSpec("bias", "float32", (5, 9)), (3, 4, 5, 9)) == ((0, 0, 9, 1), 0)
    assert A.term_strides(A.TermSpec("winbias", "float32", (1, 2, 1, 5, 9)), (4, 4, 5, 9)) == ((45, 0, 9, 1), 2)
    with pytest.raises(ValueError):
        A.term_strides(A.TermSpec("bias", "float32", (2, 1, 1, 9)), (3, 4, 5, 9))


def test_device_runtime_builds_attention_runners():
    """fuser.device_runtime's builder: node inputs (Q, K, V, mask, fill, bias) with runtime and constant terms,
    their shapes and dtypes from the executor, the variant from the op type; constants upload, fills are read."""
    from fuser.device_runtime import _attention_runner, _runtime_inputs, _Shapes, runs_on_device
    from fuser.fused import parse_op_type

    ft = parse_op_type("FusedAttentionMaskBiasNanZero")
    assert _runtime_inputs(ft) == {1, 2, 3, 5}
    be = FakeCuda()
    mask = np.ones((1, 1, 8, 8), bool)
    consts = [None, None, None, mask, np.array(-1e4, np.float16), None]
    shapes = _Shapes([(2, 4, 8, 64), (2, 2, 8, 64), (2, 2, 8, 64), None, None, (2, 1, 1, 8)],
                     [np.float16, np.float16, np.float16, None, None, np.float16])
    r = _attention_runner(be, (2, 4, 8, 64), np.float16, {"scale": 0.125, "tactic": "auto"}, consts, shapes, ft)
    assert r.output_shape == (2, 4, 8, 64) and r.tactic == "flash_mma"
    p = r.args.params
    assert (p.nterms, p.nan_zero, p.term[0].kind, p.term[1].kind, p.term[1].dtype) == (2, 1, 2, 1, 1)
    assert np.isclose(p.term[0].fill, -1e4) and p.term[0].ptr != 0  # the constant mask was uploaded
    r([16, 32, 48, 64], 80)  # Q, K, V and the runtime bias
    assert be.launches[-1][0] == "fuser_attn_mma64n128_f16" and p.term[1].ptr == 64
    from onnx import helper

    node = helper.make_node("FusedAttentionMaskBiasNanZero", ["q", "k", "v", "m", "fill", "b"], ["y"], domain="fuser")
    assert runs_on_device(node, ft, {"m": object(), "fill": object()})
    assert not runs_on_device(node, ft, {"m": object()})  # a runtime fill cannot be read by the runner
    three = parse_op_type("FusedAttentionBiasBiasBias")
    assert not runs_on_device(helper.make_node(three.name, list("qkvabc"), ["y"], domain="fuser"), three, {})


# -- flash_wgmma (Hopper wgmma, sm_90a): launch rule and fallbacks, and its module's sm_90a compile --------------

@pytest.mark.parametrize("tactic,dtype,d,dv,causal,variant", [
    ("flash_wgmma", "float16", 64, 64, False, W.WG_DEFAULT),
    ("flash_wgmma_2n64", "bfloat16", 32, 48, True, "2n64"),
    ("flash_wgmma_1n64q3", "float16", 64, 8, False, "1n64q3"),
])
def test_wgmma_launch_rule(tactic, dtype, d, dv, causal, variant):
    be = FakeCuda()
    r = A.Runner(be, (2, 4, 65, d), (2, 2, 70, d), (2, 2, 70, dv), dtype, 0.5, causal, tactic=tactic)
    assert r.tactic == "flash_wgmma" and r.output_shape == (2, 4, 65, dv)
    sfx = "f16" if dtype == "float16" else "bf16"
    entry = f"fuser_attn_wg{variant}_{sfx}"
    assert be.compiled_for[-1] == (entry, "sm_90a")  # its own module, for the arch-specific target
    r([1600, 3200, 4800], 8000, 7)
    fn, grid, block, shared, q, *_ = be.launches[-1]
    nwg = W.WG_VARIANTS[variant][0]
    assert fn == entry and block == (128 * nwg, 1, 1) and grid == (-(-65 // (64 * nwg)), 4, 2)
    assert shared == W.smem_bytes(variant) and q == 1600
    r([1602, 3200, 4800], 8000, 7)  # a pointer off 16 bytes: the CUDA-core kernel
    assert be.launches[-1][0] == f"fuser_attn_simt64_{sfx}"


@pytest.mark.parametrize("arch,dtype,d,terms,want", [
    ("sm_90", "float16", 64, 1, "flash_mma"),     # a score term: flash_mma
    ("sm_90", "bfloat16", 128, 0, "flash_mma"),   # head dims past 64
    ("sm_90", "float16", 36, 0, "flash_simt"),    # not a multiple of 8: no tensor cores at all
    ("sm_80", "float16", 64, 0, "flash_mma"),     # no wgmma before Hopper
    ("sm_100", "float16", 64, 0, "flash_mma"),    # nor after (sm_90a code runs on 9.0 only)
    ("sm_90", "float32", 64, 0, "flash_simt"),
])
def test_wgmma_falls_back(arch, dtype, d, terms, want):
    be = FakeCuda()
    be.arch = arch
    specs = [A.TermSpec("bias", "float32", (1, 4, 65, 70))] * terms
    r = A.Runner(be, (2, 4, 65, d), (2, 2, 70, d), (2, 2, 70, d), dtype, 0.5, terms=specs, tactic="flash_wgmma")
    assert r.tactic == want and all(arch is None for _, arch in be.compiled_for)


def test_wgmma_module_compiles_for_sm90a():
    """The flash_wgmma module compiles for sm_90a with every entry present and no wgmma serialised by ptxas
    (which it does, silently correct but slow, when the compiler's own code touches wgmma registers in flight);
    in the family's SOURCE (plain sm_90, sm_80, AMD) the same entries are stubs."""
    from fuser.kernels import toolchain

    if not toolchain.toolchain_available("cuda"):
        pytest.skip("NVRTC not installed")
    for sfx in ("f16", "bf16"):
        code = toolchain.compile_family("cuda", "sm_90a", A.wgmma_source_for(sfx), f"attention_wgmma_{sfx}",
                                        warp_size=32, extra_options=["--ptxas-options=-v"], use_cache=False)
        for v in W.WG_VARIANTS:
            assert toolchain.has_symbol(code.image, f"fuser_attn_wg{v}_{sfx}")
        assert "Potential Performance Loss" not in code.log, code.log
        bad = [ln for ln in code.log.splitlines() if "spill stores" in ln and " 0 bytes spill stores" not in ln]
        assert not bad, bad
