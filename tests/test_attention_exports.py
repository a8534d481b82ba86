"""Attention in real PyTorch exports: every attention block becomes exactly one fused node.

The models (tests/attention_zoo.py) are tiny random-weight builds of BERT, RoBERTa, DistilBERT, GPT-2,
LLaMA (grouped-query), ViT, Swin, wav2vec2, MobileViT and LeViT from transformers — eager and SDPA
attention — and nn.MultiheadAttention (torchvision's ViT block), F.scaled_dot_product_attention (causal,
boolean/float masks, enable_gqa), timm's Swin window attention and the seed report's single-head form,
each exported by TorchScript (opset 17) and dynamo (opsets 18 and 23, and 18 with a dynamic batch); the text
families and wav2vec2 also by TorchScript with a dynamic batch *and* sequence length, fused with generated inputs
as the CLI would (wav2vec2's waveform needs the grown symbolic sizes: 16 samples are shorter than its conv stack).
The judge: as many fused attention nodes as the export had Softmax/Attention nodes, none of those left at top
level, and the result verified against the original in onnxruntime (and our runtime) on the example
inputs. An export the exporter cannot produce, or that stock onnxruntime cannot run, is skipped: that is
not ours to fix.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import fuser  # noqa: E402
from fuser.errors import InputError  # noqa: E402

from . import attention_zoo as Z  # noqa: E402

EXPORTERS = {"ts17": (False, 17, False), "dyn18": (True, 18, False), "dyn23": (True, 23, False),
             "dyn18_dynamic": (True, 18, True), "ts17_dynseq": (False, 17, "seq")}
CASES = ([(n, a, e) for n in Z.HF_FAMILIES for a in ("eager", "sdpa") for e in ("ts17", "dyn18", "dyn23")]
         + [(n, "sdpa", "dyn18_dynamic") for n in ("bert", "gpt2", "llama")]
         + [(n, a, "ts17_dynseq") for n in ("bert", "roberta", "distilbert", "gpt2", "llama", "wav2vec2")
            for a in ("eager", "sdpa")]
         + [(n, "-", e) for n in Z.TORCH_MODULES for e in EXPORTERS if e != "ts17_dynseq"])


def run_case(name: str, attn: str, exporter: str, target: str = "hip"):
    dyn, opset, dynamic = EXPORTERS[exporter]
    try:
        mod, args, names = Z.build(name, attn if attn != "-" else "eager")
        model = Z.export(mod, args, names, dyn, opset, dynamic)
    except Exception as e:  # an exporter that cannot handle the module here is not our failure
        pytest.skip(f"exporter failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
    feeds = {n: a.numpy() for n, a in zip(names, args, strict=True)}
    feeds = {i.name: feeds[i.name] for i in model.graph.input if i.name in feeds}
    if dynamic == "seq":  # as a user runs the CLI on a serving export: no inputs, generated ones
        feeds = None
    try:
        res = fuser.optimize(model, None, inputs=feeds, target=target)
    except InputError as e:
        # (a serving export runs in onnxruntime at some size: the generated inputs must find it, not skip)
        if "cannot run the model" in str(e) and dynamic != "seq":
            pytest.skip(f"stock onnxruntime cannot run this export: {str(e)[:160]}")
        raise
    return model, res


@pytest.mark.slow
@pytest.mark.parametrize("name,attn,exporter", CASES, ids=[f"{n}-{a}-{e}" for n, a, e in CASES])
def test_every_attention_block_is_one_fused_node(name, attn, exporter):
    model, res = run_case(name, attn, exporter)
    blocks = Z.attention_blocks(model)
    assert blocks > 0
    after = collections.Counter(n.op_type for n in res.model.graph.node if n.domain in ("", "ai.onnx"))
    fused = [n for n in res.model.graph.node if n.domain == "fuser" and n.op_type.startswith("FusedAttention")]
    assert len(fused) == blocks, (blocks, [n.op_type for n in fused])
    assert after.get("Softmax", 0) == 0 and after.get("Attention", 0) == 0, after
    assert res.verification.passed, res.verification.first_failure()
    for n in fused:
        a = {x.name: x for x in n.attribute}
        assert a["num_heads"].i >= 1 and a["kv_num_heads"].i >= 1 and np.isfinite(a["scale"].f)
    if name == "llama" and exporter != "ts17" or name == "sdpa_gqa":
        assert any("Gqa" in n.op_type for n in fused)  # K/V enter with their own head count
    if name == "swin_window_shifted":
        assert any("WinBias" in n.op_type for n in fused)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "llama", "vit"])
def test_target_onnx_at_opset_23_writes_standard_attention(name):
    model, res = run_case(name, "sdpa", "dyn23", target="onnx")
    ops = collections.Counter(n.op_type for n in res.model.graph.node)
    assert ops.get("Attention", 0) == Z.attention_blocks(model) and not ops.get("Softmax")
    assert all(n.domain in ("", "ai.onnx") for n in res.model.graph.node) and not res.model.functions
    assert res.verification.passed
