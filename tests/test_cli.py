"""The command line as a user meets it: exit codes, one-line errors, no tracebacks, no partial files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from .conftest import EXAMPLES

DARKNET = EXAMPLES / "darknet_tiny.onnx"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.run([sys.executable, "-m", "fuser.cli.main", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def assert_clean_error(p: subprocess.CompletedProcess, code: int, needle: str = "") -> None:
    assert p.returncode == code, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("onnx-fuse: error")]
    assert len(lines) == 1, p.stderr
    assert needle in lines[0], lines[0]


def test_fuse_writes_verified_model_and_report(tmp_path: Path) -> None:
    out, rep = tmp_path / "f.onnx", tmp_path / "r.json"
    p = cli(DARKNET, "-o", out, "--report", rep)
    assert p.returncode == 0, p.stderr
    assert "FusedConvLeakyRelu" in p.stderr and "runtime:cpu" in p.stderr
    r = json.loads(rep.read_text())
    assert r["schema_version"] == 1 and r["tool"]["name"] == "onnx-fuse"
    assert r["output"]["sha256"] and r["input"]["sha256"]
    assert r["op_counts"]["before"]["BatchNormalization"] == 9
    assert r["op_counts"]["after"]["fuser::FusedConvLeakyRelu"] == 6
    assert r["op_counts"]["after"]["fuser::FusedConvLeakyReluAdd"] == 3  # its shortcut Adds
    assert "Add" not in r["op_counts"]["after"]
    assert len([f for f in r["fusions"] if f["kernel"] == "conv"]) == 9
    assert r["pass_counts"]["conv_shortcut"] == 3
    assert r["verification"]["passed"] and len(r["verification"]["outputs"]) == 2
    assert [x for x in tmp_path.iterdir() if x.name.endswith(".tmp")] == []


def test_rerun_is_byte_identical(tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert cli(DARKNET, "-o", a, "-q").returncode == 0
    assert cli(DARKNET, "-o", b, "-q", "--no-verify").returncode == 0
    assert a.read_bytes() == b.read_bytes()


def test_fuse_subcommand_and_target_onnx(tmp_path: Path) -> None:
    out = tmp_path / "s.onnx"
    assert cli("fuse", DARKNET, "-o", out, "--target", "onnx", "-q").returncode == 0
    m = onnx.load(out)
    assert not m.functions and all(n.domain == "" for n in m.graph.node)
    assert {n.op_type for n in m.graph.node} >= {"Conv", "LeakyRelu"}
    assert "BatchNormalization" not in {n.op_type for n in m.graph.node}


def test_list_passes_and_skip(tmp_path: Path) -> None:
    p = cli("--list-passes")
    assert p.returncode == 0
    assert p.stdout.split()[:5] == ["normalize", "attention", "pack_qkv", "attention_terms", "group_norm"]
    out = tmp_path / "k.onnx"
    assert cli(DARKNET, "-o", out, "--skip", "conv_activation", "--skip", "leaky_relu", "-q").returncode == 0
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert "BatchNormalization" not in ops and "LeakyRelu" in ops
    assert_clean_error(cli(DARKNET, "-o", out, "--skip", "nope"), 2, "unknown pass")


def test_version_and_help() -> None:
    assert cli("--version").stdout.strip().startswith("onnx-fuse, version")
    assert "onnx-fuse MODEL.onnx -o FUSED.onnx" in cli("--help").stdout


def test_verification_failure_exit_1_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "f.onnx"
    p = cli(DARKNET, "-o", out, "--rtol", "0")  # folding changes rounding by ~1e-7: a zero tolerance fails
    assert_clean_error(p, 1, "verification failed for output 'output'")
    assert "rel-L2" in p.stderr and not out.exists()
    p = cli(DARKNET, "-o", out, "--rtol", "0", "--keep-on-fail", "-q")
    assert p.returncode == 1 and out.exists()


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "random", "truncated", "not_a_model"])
def test_bad_model_files(tmp_path: Path, kind: str) -> None:
    bad = tmp_path / "bad.onnx"
    if kind == "directory":
        bad.mkdir()
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "random":
        bad.write_bytes(np.random.default_rng(1).bytes(4096))
    elif kind == "truncated":
        bad.write_bytes(DARKNET.read_bytes()[:5000])
    elif kind == "not_a_model":
        bad.write_bytes(onnx.helper.make_tensor("t", onnx.TensorProto.FLOAT, [2], [1.0, 2.0]).SerializeToString())
    out = tmp_path / "out.onnx"
    assert_clean_error(cli(bad, "-o", out), 2)
    assert not out.exists()


def test_output_equal_to_input_refused(tmp_path: Path) -> None:
    m = tmp_path / "m.onnx"
    shutil.copy(DARKNET, m)
    before = m.read_bytes()
    assert_clean_error(cli(m, "-o", m), 2, "refusing to overwrite the input")
    assert m.read_bytes() == before


def test_output_folder_missing(tmp_path: Path) -> None:
    assert_clean_error(cli(DARKNET, "-o", tmp_path / "nope" / "f.onnx"), 2, "does not exist")


def test_shape_and_input_errors(tmp_path: Path) -> None:
    out = tmp_path / "f.onnx"
    assert_clean_error(cli(DARKNET, "-o", out, "--shape", "nope:1,3,64,64"), 2, "not an input")
    wrong = tmp_path / "x.npy"
    np.save(wrong, np.ones((1, 3, 32, 32), np.float32))
    assert_clean_error(cli(DARKNET, "-o", out, "--input", f"input={wrong}"), 2, "does not fit")
    np.save(wrong, np.ones((1, 3, 64, 64), np.float64))
    assert_clean_error(cli(DARKNET, "-o", out, "--input", f"input={wrong}"), 2, "dtype")
    good = tmp_path / "g.npy"
    np.save(good, np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    assert cli(DARKNET, "-o", out, "--input", f"input={good}", "-q").returncode == 0
    assert cli(DARKNET, "-o", out, "--shape", "input:4,3,64,64", "-q").returncode == 0
    assert not out.exists() or out.stat().st_size > 0


def test_missing_output_option() -> None:
    assert_clean_error(cli(DARKNET), 2, "missing -o")


def test_opset_too_old(tmp_path: Path) -> None:
    m = onnx.load(DARKNET)
    m.opset_import[0].version = 6
    bad = tmp_path / "old.onnx"
    bad.write_bytes(m.SerializeToString())
    assert_clean_error(cli(bad, "-o", tmp_path / "o.onnx"), 2, "opset 6")


def test_run_and_bench_take_no_fp64_linear(tmp_path: Path) -> None:
    # the flag reaches Session(fp64_linear=False); on the CPU no linear steps are planned either way
    model = EXAMPLES / "resnet_block.onnx"
    outs = []
    for extra in ([], ["--no-fp64-linear"]):
        npz = tmp_path / f"out{len(extra)}.npz"
        p = cli("run", model, "--device", "cpu", "-o", npz, *extra)
        assert p.returncode == 0, p.stderr
        outs.append(dict(np.load(npz)))
    assert outs[0].keys() == outs[1].keys() and all(np.array_equal(outs[0][k], outs[1][k]) for k in outs[0])
    p = cli("bench", model, model, "--device", "cpu", "--iters", "2", "--warmup", "1", "--no-fp64-linear")
    assert p.returncode == 0, p.stderr
