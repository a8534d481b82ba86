"""The GPU runtime end to end (DESIGN §6): fused models in ``fuser.runtime.Session(device="cuda")``
against the original in onnxruntime (CPU), on the onnx package's light zoo models and examples/.

Marked ``gpu``; skipped where there is no CUDA device or no onnxruntime CUDA EP.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.gpu

LIGHT = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def cuda_ready():
    import onnxruntime as ort

    from fuser.kernels.backend import BackendUnavailable, select_backend

    try:
        select_backend("cuda")
    except BackendUnavailable as e:
        pytest.skip(f"no CUDA device: {e}")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    return True


CASES = [
    LIGHT / "light_densenet121.onnx",  # 59 fused convs + 62 standalone BN+ReLU kernels between islands
    LIGHT / "light_resnet50.onnx",
    LIGHT / "light_inception_v2.onnx",
    LIGHT / "light_shufflenet.onnx",
    EXAMPLES / "resnet_block.onnx",
    EXAMPLES / "darknet_tiny.onnx",
]


@pytest.mark.parametrize("path", CASES, ids=[c.stem for c in CASES])
def test_gpu_runtime_matches_original(cuda_ready, path: Path) -> None:
    import fuser
    from fuser.runtime import Session
    from fuser.verify import check_output, make_inputs, ort_run

    original = onnx.load(path)
    fused = fuser.optimize(original, None, verify_result=False).model
    rng_seed = int.from_bytes(os.urandom(2), "little")  # fresh inputs every run
    feeds = make_inputs(original, rng_seed)
    ref = ort_run(original, feeds)
    sess = Session(fused, device="cuda")
    # every fused node of these 2-D CNNs has a device kernel (tactic chosen by the heuristic)
    fused_nodes = sum(1 for n in fused.graph.node if n.domain == "fuser")
    assert sess.device == "cuda" and sess.kernel_steps == fused_nodes > 0
    outs = sess.run(None, feeds)
    for (name, r), o in zip(ref.items(), outs, strict=True):
        c = check_output(name, "runtime:cuda", r, o, 1e-5, None)
        assert c.passed, c
    # a second run reuses runners and buffers and must give the same numbers (to the last ulps: split-K conv
    # tactics add their partial sums with atomics, in an order that varies run to run)
    again = sess.run(None, feeds)
    for a, b in zip(outs, again, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("path", CASES, ids=[c.stem for c in CASES])
def test_gpu_runtime_cuda_graph_replays_fresh_inputs(cuda_ready, path: Path) -> None:
    """Run 1 eager, run 2 captures (and checks its replay against an eager run), runs 3.. replay: every run gets
    fresh random inputs (copied into the graph's static inputs) and must match onnxruntime on the CPU."""
    import fuser
    from fuser.runtime import Session
    from fuser.verify import check_output, make_inputs, ort_run

    original = onnx.load(path)
    fused = fuser.optimize(original, None, verify_result=False).model
    sess = Session(fused, device="cuda")
    base = int.from_bytes(os.urandom(2), "little")
    for k in range(4):
        feeds = make_inputs(original, base + k)
        outs = sess.run(None, feeds)
        for (name, r), o in zip(ort_run(original, feeds).items(), outs, strict=True):
            c = check_output(name, f"runtime:cuda run {k}", r, o, 1e-5, None)
            assert c.passed, c
    assert sess.graph_status == "on", sess.graph_status
    assert sess._device._graph is not None
    # step-by-step gives the same numbers
    eager = Session(fused, device="cuda", cuda_graph=False)
    assert eager.graph_status == "off"
    for a, b in zip(eager.run(None, feeds), sess.run(None, feeds), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_gpu_runtime_cuda_graph_off_for_value_dependent_shapes(cuda_ready) -> None:
    """A Reshape whose shape comes from an input's values cannot be replayed: graphs stay off, runs stay right."""
    from onnx import TensorProto, helper

    from fuser.runtime import Session

    g = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("LeakyRelu", ["r"], ["y"], alpha=0.2)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6]),
              helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    sess = Session(m, device="cuda")
    assert sess.graph_status.startswith("off") and "Reshape" in sess.graph_status
    x = np.random.default_rng().standard_normal((4, 6)).astype(np.float32)
    for shape in ([3, 8], [8, 3], [24, 1]):
        (y,) = sess.run(None, {"x": x, "s": np.array(shape, np.int64)})
        ref = x.reshape(shape)
        np.testing.assert_allclose(y, np.where(ref > 0, ref, 0.2 * ref), rtol=1e-6)


def test_gpu_runtime_fp16_affine_and_leaky(cuda_ready) -> None:
    """Standalone BN+LeakyReLU and a LeakyReLU in fp16 run on our kernels in the runtime."""
    from onnx import TensorProto, helper, numpy_helper

    import fuser
    from fuser.runtime import Session
    from fuser.verify import check_output, ort_run

    rng = np.random.default_rng()
    c = 7
    inits = [numpy_helper.from_array(v.astype(np.float16), n) for n, v in (
        ("g", 1 + 0.1 * rng.standard_normal(c)), ("b", 0.1 * rng.standard_normal(c)),
        ("m", 0.1 * rng.standard_normal(c)), ("v", 0.5 + rng.random(c)))]
    nodes = [helper.make_node("Add", ["x", "x2"], ["s"]),
             helper.make_node("BatchNormalization", ["s", "g", "b", "m", "v"], ["bn"]),
             helper.make_node("LeakyRelu", ["bn"], ["y0"], alpha=0.2),
             helper.make_node("Concat", ["y0", "x"], ["cat"], axis=1),
             helper.make_node("LeakyRelu", ["cat"], ["y"], alpha=0.1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [3, c, 5, 9]),
                                       helper.make_tensor_value_info("x2", TensorProto.FLOAT16, [3, c, 5, 9])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [3, 2 * c, 5, 9])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    fused = fuser.optimize(m, None).model
    sess = Session(fused, device="cuda")
    assert sess.kernel_steps == 2
    feeds = {"x": rng.standard_normal((3, c, 5, 9)).astype(np.float16),
             "x2": rng.standard_normal((3, c, 5, 9)).astype(np.float16)}
    ref = ort_run(m, feeds)["y"]
    out = sess.run(None, feeds)[0]
    assert check_output("y", "runtime:cuda", ref, out, 1e-2, None).passed


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
def test_gpu_runtime_darknet_shortcut(cuda_ready, dtype) -> None:
    """Darknet's residual blocks (Conv+BN+LeakyReLU twice, then the shortcut Add after the activation): every
    Add lands in a FusedConvLeakyReluAdd that runs on a device kernel with the residual after the activation."""
    from onnx import TensorProto, helper, numpy_helper

    import fuser
    from fuser.runtime import Session
    from fuser.verify import check_output, ort_run

    rng = np.random.default_rng()
    c, nodes, inits = 16, [], []

    def conv_bn_leaky(x: str, cin: int, cout: int, k: int, name: str) -> str:
        w = rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)
        bn = [1 + 0.1 * rng.standard_normal(cout), 0.1 * rng.standard_normal(cout),
              0.1 * rng.standard_normal(cout), 0.5 + rng.random(cout)]
        names = [f"{name}.{p}" for p in ("w", "g", "b", "m", "v")]
        inits.extend(numpy_helper.from_array(v.astype(dtype), n) for n, v in zip(names, [w, *bn], strict=True))
        nodes.extend([helper.make_node("Conv", [x, names[0]], [f"{name}.c"], pads=[k // 2] * 4),
                      helper.make_node("BatchNormalization", [f"{name}.c", *names[1:]], [f"{name}.bn"]),
                      helper.make_node("LeakyRelu", [f"{name}.bn"], [f"{name}.y"], alpha=0.1)])
        return f"{name}.y"

    x = "x"
    for i in range(3):
        y = conv_bn_leaky(conv_bn_leaky(x, c, c // 2, 1, f"b{i}.1"), c // 2, c, 3, f"b{i}.2")
        nodes.append(helper.make_node("Add", [y, x], ["y" if i == 2 else f"b{i}.out"]))
        x = f"b{i}.out"
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    g = helper.make_graph(nodes, "darknet", [helper.make_tensor_value_info("x", elem, [2, c, 20, 24])],
                          [helper.make_tensor_value_info("y", elem, [2, c, 20, 24])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    fused = fuser.optimize(m, None, verify_result=False).model
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("FusedConvLeakyReluAdd") == 3 and ops.count("FusedConvLeakyRelu") == 3 and len(ops) == 6
    sess = Session(fused, device="cuda")
    assert sess.kernel_steps == 6
    feeds = {"x": rng.standard_normal((2, c, 20, 24)).astype(dtype)}
    ref = ort_run(m, feeds)["y"]
    out = sess.run(None, feeds)[0]
    c_ = check_output("y", "runtime:cuda", ref, out, 1e-5 if dtype == np.float32 else 1e-2, None)
    assert c_.passed, c_
