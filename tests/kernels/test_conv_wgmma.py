"""wgmma_tf32 (Hopper warpgroup MMA, sm_90a) on the CPU: where the tactic is offered (NVIDIA sm_90 with TF32 allowed,
nowhere else), the heuristic and launch rule, what a runner compiles (its own module, for sm_90a) and launches, and
the module's sm_90a compile (no wgmma serialised by ptxas, no spills). Its results are tested on the GPU
(tests/gpu/test_conv_gpu.py): the CPU emulator runs only the stubs of other targets.
"""

from __future__ import annotations

import numpy as np
import pytest

from fuser.kernels import conv, conv_wgmma

from .fake_device import FakeDevice


class FakeCuda(FakeDevice):
    """Records what a runner compiles and launches; compiles nothing."""

    name, arch, warp_size, num_sms = "cuda", "sm_90", 32, 132

    def __init__(self, arch: str = "sm_90") -> None:
        super().__init__()
        self.arch = arch
        self.shared: list = []

    def function(self, family, source, entry, arch=None):
        self.compiled_for.append((family, entry, arch))
        assert entry in source
        return entry

    def allow_dynamic_shared(self, fn, nbytes):
        self.shared.append((fn, nbytes))

    def launch(self, fn, grid, block, args, shared=0, stream=0):
        self.launches.append((fn, grid, block, shared))



BIG = conv.geometry((8, 64, 128, 128), (128, 64, 3, 3), pads=[1] * 4)


def test_offered_only_on_sm90_with_tf32() -> None:
    assert conv.algo_ok("wgmma_tf32", BIG, np.float32, "cuda", "sm_90")
    for args in [("cuda", "sm_80"), ("cuda", "sm_100"), ("cuda", ""), ("hip", "sm_90"), ("hip", "gfx90a")]:
        assert not conv.algo_ok("wgmma_tf32", BIG, np.float32, *args)
    assert not conv.algo_ok("wgmma_tf32", BIG, np.float16, "cuda", "sm_90")
    cands = conv.candidate_tactics(BIG, np.float32, True, "cuda", "sm_90")
    assert [t for t in cands if t.startswith("wgmma")] == [conv.tactic_name("wgmma_tf32", t)
                                                            for t in conv.TILES["wgmma_tf32"]]
    assert all(conv.parse_tactic(t) for t in cands)
    for cands in (conv.candidate_tactics(BIG, np.float32, False, "cuda", "sm_90"),
                  conv.candidate_tactics(BIG, np.float32, True, "cuda", "sm_80"),
                  conv.candidate_tactics(BIG, np.float32, True, "cuda"),
                  conv.candidate_tactics(BIG, np.float32, True, "hip", "gfx90a"),
                  conv.candidate_tactics(BIG, np.float16, True, "cuda", "sm_90")):
        assert not any(t.startswith("wgmma") for t in cands)


def test_heuristic_and_launch_rule() -> None:
    assert conv.heuristic(BIG, np.float32, True, "cuda", "sm_90") == "wgmma_tf32"
    assert conv.pick_tile("wgmma_tf32", BIG) == (128, 128)
    assert conv.heuristic(BIG, np.float32, True, "cuda", "sm_80") == "mma_tf32_ms"
    assert conv.heuristic(BIG, np.float32, True, "cuda") == "mma_tf32_ms"
    assert conv.heuristic(BIG, np.float32, False, "cuda", "sm_90") == "winograd"   # no TF32 without allow_tf32
    small = conv.geometry((1, 64, 56, 56), (128, 64, 1, 1))       # K = 64, 98 blocks: mma_tf32_ms's
    assert conv.heuristic(small, np.float32, True, "cuda", "sm_90") == "mma_tf32_ms"
    deep = conv.geometry((8, 512, 8, 8), (1024, 512, 3, 3), pads=[1] * 4)   # 128 blocks, K = 4608
    assert conv.heuristic(deep, np.float32, True, "cuda", "sm_90") == "wgmma_tf32"
    assert conv.pick_tile("wgmma_tf32", deep) == (64, 64)


@pytest.mark.parametrize("xs,ws,attrs,tactic,tile,kmode", [
    ((8, 64, 128, 128), (128, 64, 3, 3), {"pads": [1] * 4}, "wgmma_tf32", (128, 128), 1),
    ((2, 40, 6, 8), (24, 40, 1, 1), {}, "wgmma_tf32_64x64", (64, 64), 2),        # 1x1: 16-byte gather
    ((1, 12, 14, 14), (18, 4, 3, 3), {"group": 3, "pads": [2] * 4, "dilations": [2, 2]}, "wgmma_tf32_128x64",
     (128, 64), 0),                                                                # k table, groups
])
def test_runner_compiles_for_sm90a_and_launches(xs, ws, attrs, tactic, tile, kmode) -> None:
    be = FakeCuda()
    w = np.ones(ws, np.float32)
    r = conv.Runner(be, xs, np.float32, w, None, tactic=tactic, **attrs)
    assert r.tactic == conv.tactic_name("wgmma_tf32", tile)
    entry = conv_wgmma.wg_entry(tile)
    assert be.compiled_for == [(conv_wgmma.NAME, entry, "sm_90a")]   # its own module, the arch-specific target
    assert be.shared == [(entry, conv_wgmma.smem_bytes(tile))]
    r([1 << 20], 1 << 22)
    fn, grid, block, shared = be.launches[-1]
    g = r.geom
    assert fn == entry and block == (conv_wgmma.wg_threads(tile), 1, 1) and shared == conv_wgmma.smem_bytes(tile)
    assert grid[:2] == (-(-g.npix // tile[1]), -(-g.mg // tile[0])) and grid[2] % g.group == 0
    assert r.impl.kmode(1 << 20) == kmode
    assert conv_wgmma.smem_bytes(tile) <= 227 * 1024


def test_pinned_wgmma_elsewhere_runs_the_heuristic() -> None:
    be = FakeCuda("sm_80")
    r = conv.Runner(be, (8, 64, 32, 32), np.float32, np.ones((128, 64, 3, 3), np.float32), tactic="wgmma_tf32_64x64",
                    pads=[1] * 4)
    assert r.tactic.startswith("mma_tf32_ms") and all(a is None for _, _, a in be.compiled_for)


def test_family_source_is_stubs_off_sm90a() -> None:
    """The family's SOURCE (what CI compiles for sm_80/sm_90/gfx90a/gfx1030, tests/kernels/test_compile.py) holds
    every entry; wgmma code only under the sm_90a feature macro."""
    assert all(f"FUSER_CWG_ENTRY({e}," in conv_wgmma.SOURCE for e in conv_wgmma.VARIANTS)
    src = conv_wgmma.SOURCE
    assert src.index("defined(__CUDA_ARCH_FEAT_SM90_ALL)") < src.index("wgmma.mma_async")


def test_module_compiles_for_sm90a() -> None:
    """Every tile's module compiles for sm_90a with no wgmma serialised by ptxas and no spills."""
    from fuser.kernels import toolchain

    if not toolchain.toolchain_available("cuda"):
        pytest.skip("NVRTC not installed")
    for tile in conv_wgmma.WG_TILES:
        code = toolchain.compile_family("cuda", "sm_90a", conv_wgmma.entry_source(tile), conv_wgmma.NAME,
                                        warp_size=32, extra_options=["--ptxas-options=-v"], use_cache=False)
        assert toolchain.has_symbol(code.image, conv_wgmma.wg_entry(tile))
        assert "Potential Performance Loss" not in code.log, code.log
        bad = [ln for ln in code.log.splitlines() if "spill stores" in ln and " 0 bytes spill stores" not in ln]
        assert not bad, bad
