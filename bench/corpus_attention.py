"""Attention export corpus: every model of tests/attention_zoo.py (transformers' BERT, RoBERTa, DistilBERT,
GPT-2, LLaMA, ViT, Swin, wav2vec2, MobileViT, LeViT with eager and SDPA attention; nn.MultiheadAttention,
F.scaled_dot_product_attention variants, timm's Swin window attention, the seed report's single head) through
TorchScript (opset 17), dynamo (18, 23, and 18 with a dynamic batch), fused and verified on the example inputs; the
text families and wav2vec2 also by TorchScript with a dynamic batch and sequence, fused from generated inputs (as
the CLI does).
Prints one line per export and the totals: attention blocks (Softmax/Attention nodes) before, fused nodes
after, Softmax/Attention left, verification, and how many blocks got K/V heads absorbed (Gqa) or a window.

Usage: python bench/corpus_attention.py [--out DIR]   (CPU only; a few minutes)
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fuser  # noqa: E402
from fuser.errors import InputError, VerificationError  # noqa: E402
from tests import attention_zoo as Z  # noqa: E402

EXPORTERS = {"ts17": (False, 17, False), "dyn18": (True, 18, False), "dyn23": (True, 23, False),
             "dyn18_dynamic": (True, 18, True), "ts17_dynseq": (False, 17, "seq")}
DYNSEQ = ("bert", "roberta", "distilbert", "gpt2", "llama", "wav2vec2")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    rows = []
    cases = [(n, a) for n in Z.HF_FAMILIES for a in ("eager", "sdpa")] + [(n, "-") for n in Z.TORCH_MODULES]
    for name, attn in cases:
        for ex, (dyn, opset, dynamic) in EXPORTERS.items():
            if dynamic is True and name in Z.HF_FAMILIES and name not in ("bert", "gpt2", "llama"):
                continue
            if dynamic == "seq" and name not in DYNSEQ:
                continue
            row = {"model": name, "attn": attn, "exporter": ex}
            t0 = time.time()
            try:
                mod, a, names = Z.build(name, attn if attn != "-" else "eager")
                model = Z.export(mod, a, names, dyn, opset, dynamic)
            except Exception as e:  # noqa: BLE001
                row["status"] = f"export failed: {type(e).__name__}"
                rows.append(row)
                print(f"{name:22s} {attn:5s} {ex:14s} {row['status']}")
                continue
            feeds = {n: x.numpy() for n, x in zip(names, a, strict=True)}
            feeds = {i.name: feeds[i.name] for i in model.graph.input if i.name in feeds}
            row["blocks"] = Z.attention_blocks(model)
            try:
                res = fuser.optimize(model, None, inputs=None if dynamic == "seq" else feeds)
            except (InputError, VerificationError) as e:
                row["status"] = ("onnxruntime cannot run the export" if "cannot run the model" in str(e)
                                 else f"{type(e).__name__}: {str(e)[:200]}")
                rows.append(row)
                print(f"{name:22s} {attn:5s} {ex:14s} {row['status']}")
                continue
            ops = collections.Counter(n.op_type for n in res.model.graph.node)
            fused = [n.op_type for n in res.model.graph.node if n.op_type.startswith("FusedAttention")]
            row.update(fused=len(fused), left=ops.get("Softmax", 0) + ops.get("Attention", 0),
                       verified=res.verification.passed,
                       worst_rel_l2=max(c.rel_l2 for c in res.verification.checks),
                       variants=sorted(set(fused)), seconds=round(time.time() - t0, 1), status="ok")
            rows.append(row)
            print(f"{name:22s} {attn:5s} {ex:14s} blocks {row['blocks']} fused {row['fused']} left {row['left']} "
                  f"verified {row['verified']} rel {row['worst_rel_l2']:.1e} {','.join(row['variants'])}")
    ok = [r for r in rows if r.get("status") == "ok"]
    blocks = sum(r["blocks"] for r in ok)
    fused = sum(r["fused"] for r in ok)
    left = sum(r["left"] for r in ok)
    verified = sum(r["verified"] for r in ok)
    gqa = sum(any("Gqa" in v for v in r["variants"]) for r in ok if r["model"] in ("llama", "sdpa_gqa"))
    summary = {"exports": len(rows), "fused_exports": len(ok), "blocks": blocks, "fused": fused, "left": left,
               "verified": verified, "gqa_exports_absorbed": gqa,
               "worst_rel_l2": max((r["worst_rel_l2"] for r in ok), default=None),
               "not_run": {r["status"] for r in rows if r.get("status") != "ok"}}
    print(json.dumps({k: (sorted(v) if isinstance(v, set) else v) for k, v in summary.items()}, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus_attention.json").write_text(json.dumps({"summary": {k: (sorted(v) if isinstance(v, set) else v)
                                                                       for k, v in summary.items()},
                                                           "rows": rows}, indent=1))
    return 0 if fused == blocks and left == 0 and verified == len(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
