"""Tiny transformer models for the attention tests and the export corpus (bench/corpus_attention.py).

Every model is built from a config with random weights (no downloads): HF transformers' BERT, RoBERTa,
DistilBERT, GPT-2, LLaMA (grouped-query), ViT, Swin, wav2vec2, MobileViT and LeViT with their eager and
SDPA attention, plus plain PyTorch modules for what transformers does not cover: nn.MultiheadAttention as
torchvision's ViT-B/16 encoder block uses it (need_weights False: the SDPA path; True: bmm + softmax),
F.scaled_dot_product_attention with causal / boolean / float masks, custom scale and enable_gqa, a
timm-style Swin window attention (relative-position bias and the shifted-window mask added in the
[B/nW, nW, H, N, N] view), and the seed report's single-head [B, S, D] attention.

:func:`export` runs one PyTorch exporter: TorchScript at opset 17, dynamo at 18 or 23 (optionally with
dynamic batch/sequence dims).
"""

from __future__ import annotations

import io
import math
import warnings

import onnx

try:
    import torch
    from torch import nn
    from torch.nn import functional as F
except ImportError:  # pragma: no cover - the tests skip without torch
    torch = None
    nn = None

HF_FAMILIES = ("bert", "roberta", "distilbert", "gpt2", "llama", "vit", "swin", "wav2vec2", "mobilevit", "levit")
TORCH_MODULES = ("mha_vit_block", "mha_weights", "sdpa_plain", "sdpa_causal", "sdpa_bool_mask", "sdpa_float_mask",
                 "sdpa_gqa", "swin_window_shifted", "seed_single_head")


def _hf(name: str, attn: str):
    import transformers as T

    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    ids = dict(input_ids=torch.randint(3, 100, (2, 8)), attention_mask=torch.tensor([[1] * 8, [1] * 6 + [0] * 2]))
    image = dict(pixel_values=torch.randn(2, 3, 32, 32))
    if name == "bert":
        m, inp = T.BertModel(T.BertConfig(**small, vocab_size=100, max_position_embeddings=64),
                             add_pooling_layer=False), ids
    elif name == "roberta":
        m, inp = T.RobertaModel(T.RobertaConfig(**small, vocab_size=100, max_position_embeddings=64),
                                add_pooling_layer=False), ids
    elif name == "distilbert":
        m, inp = T.DistilBertModel(T.DistilBertConfig(dim=32, n_layers=1, n_heads=4, hidden_dim=64, vocab_size=100,
                                                      max_position_embeddings=64)), ids
    elif name == "gpt2":
        m, inp = T.GPT2Model(T.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=100, n_positions=64,
                                          bos_token_id=1, eos_token_id=2)), ids
    elif name == "llama":
        m, inp = T.LlamaModel(T.LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=64, vocab_size=100,
                                            max_position_embeddings=64, bos_token_id=1, eos_token_id=2)), ids
    elif name == "vit":
        m, inp = T.ViTModel(T.ViTConfig(**small, image_size=32, patch_size=8), add_pooling_layer=False), image
    elif name == "swin":
        m, inp = T.SwinModel(T.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2], num_heads=[2],
                                          window_size=4)), image
    elif name == "wav2vec2":
        m, inp = T.Wav2Vec2Model(T.Wav2Vec2Config(**small, conv_dim=(16, 16), conv_stride=(5, 2),
                                                  conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                                                  num_conv_pos_embedding_groups=4)), dict(
            input_values=torch.randn(2, 400))
    elif name == "mobilevit":
        m, inp = T.MobileViTModel(T.MobileViTConfig(image_size=32, hidden_sizes=[16, 24, 32],
                                                    neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
                                                    num_attention_heads=2)), image
    elif name == "levit":
        m, inp = T.LevitModel(T.LevitConfig(image_size=32, hidden_sizes=[16, 32, 48], num_attention_heads=[1, 2, 3],
                                            depths=[1, 1, 1], key_dim=[8, 8, 8], patch_size=16, stride=2)), image
    else:
        raise KeyError(name)
    try:
        m.set_attn_implementation(attn)
    except (AttributeError, ValueError):
        m.config._attn_implementation = attn
    return _HFWrap(m, list(inp), hidden=name == "mobilevit"), tuple(inp.values()), list(inp)


if nn is not None:
    class _HFWrap(nn.Module):
        """Positional inputs → the model's last hidden state (MobileViT: its last transformer stage's output,
        because its pooled head is all zeros with random weights)."""

        def __init__(self, m, keys: list[str], hidden: bool = False) -> None:
            super().__init__()
            self.m, self.keys, self.hidden = m, keys, hidden

        def forward(self, *args):
            out = self.m(**dict(zip(self.keys, args, strict=True)), output_hidden_states=self.hidden)
            if self.hidden:
                return out.hidden_states[-2]
            return out[0] if isinstance(out, tuple) else out.last_hidden_state

    class MHABlock(nn.Module):
        """torchvision's ViT EncoderBlock: LN → nn.MultiheadAttention(batch_first) → residual → MLP."""

        def __init__(self, need_weights: bool = False, dim: int = 32, heads: int = 4) -> None:
            super().__init__()
            self.ln_1 = nn.LayerNorm(dim)
            self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.ln_2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            self.need_weights = need_weights

        def forward(self, x):
            y = self.ln_1(x)
            y, _ = self.self_attention(y, y, y, need_weights=self.need_weights)
            x = x + y
            return x + self.mlp(self.ln_2(x))

    class SDPA(nn.Module):
        """Projections + F.scaled_dot_product_attention in the given configuration."""

        def __init__(self, kind: str, dim: int = 32, heads: int = 4, kv_heads: int = 4) -> None:
            super().__init__()
            self.kind, self.h, self.hkv, self.d = kind, heads, kv_heads, dim // heads
            self.q = nn.Linear(dim, dim)
            self.k = nn.Linear(dim, kv_heads * self.d)
            self.v = nn.Linear(dim, kv_heads * self.d)
            self.o = nn.Linear(dim, dim)

        def forward(self, x, mask=None):
            b, s, _ = x.shape
            q = self.q(x).view(b, s, self.h, self.d).transpose(1, 2)
            k = self.k(x).view(b, s, self.hkv, self.d).transpose(1, 2)
            v = self.v(x).view(b, s, self.hkv, self.d).transpose(1, 2)
            kw = {}
            if self.kind == "causal":
                kw["is_causal"] = True
            elif self.kind == "bool_mask":
                kw["attn_mask"] = mask[:, None, None, :] > 0
            elif self.kind == "float_mask":
                kw["attn_mask"] = (1.0 - mask[:, None, None, :]) * -1e4
            elif self.kind == "gqa":
                kw["enable_gqa"] = True
                kw["scale"] = 0.3
            y = F.scaled_dot_product_attention(q, k, v, **kw)
            return self.o(y.transpose(1, 2).reshape(b, s, self.h * self.d))

    class WindowAttention(nn.Module):
        """timm's Swin WindowAttention, with the shifted-window mask added in the 5-D view."""

        static_batch = True  # B_ = batch * nW: the windowed batch is not free

        def __init__(self, dim: int = 16, heads: int = 2, window: int = 4, shifted: bool = True) -> None:
            super().__init__()
            self.heads, self.window, self.n = heads, window, window * window
            self.scale = (dim // heads) ** -0.5
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)
            self.table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.5)
            coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
            rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
            self.register_buffer("index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)
            nw = 4  # an 8x8 map in 4x4 windows
            mask = torch.zeros(nw, self.n, self.n)
            if shifted:
                ids = torch.arange(self.n) % 3
                mask = torch.where(ids[None, :, None] == ((ids[None, None, :] + torch.arange(nw)[:, None, None]) % 3),
                                   0.0, -100.0)
            self.register_buffer("mask", mask, persistent=False)

        def forward(self, x):  # x [B_, N, C] with B_ = batch * nW
            b_, n, c = x.shape
            qkv = self.qkv(x).reshape(b_, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            attn = (q * self.scale) @ k.transpose(-2, -1)
            bias = self.table[self.index.view(-1)].view(self.n, self.n, -1).permute(2, 0, 1)
            attn = attn + bias.unsqueeze(0)
            nw = self.mask.shape[0]
            attn = attn.view(b_ // nw, nw, self.heads, n, n) + self.mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n).softmax(-1)
            return self.proj((attn @ v).transpose(1, 2).reshape(b_, n, c))

    class SeedAttention(nn.Module):
        """The seed report's operator: Q, K, V [B, S, D], one head, softmax(Q Kᵀ / √D) V."""

        def forward(self, q, k, v):
            return torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1) @ v


def build(name: str, attn: str = "eager"):
    """(module, example args, input names) for an HF family (``attn`` eager | sdpa) or a torch module."""
    if name in HF_FAMILIES:
        return _hf(name, attn)
    torch.manual_seed(0)
    x = torch.randn(2, 8, 32)
    mask = torch.tensor([[1.0] * 8, [1.0] * 6 + [0.0] * 2])
    if name == "mha_vit_block":
        return MHABlock(False), (x,), ["x"]
    if name == "mha_weights":
        return MHABlock(True), (x,), ["x"]
    if name.startswith("sdpa_"):
        kind = name[5:]
        mod = SDPA("gqa", kv_heads=2) if kind == "gqa" else SDPA(kind)
        return (mod, (x, mask), ["x", "mask"]) if kind.endswith("mask") else (mod, (x,), ["x"])
    if name == "swin_window_shifted":
        return WindowAttention(), (torch.randn(8, 16, 16),), ["x"]
    if name == "seed_single_head":
        return SeedAttention(), tuple(torch.randn(4, 16, 8) for _ in range(3)), ["q", "k", "v"]
    raise KeyError(name)


SEQUENCE_INPUTS = ("input_ids", "attention_mask", "input_values")


def export(module, args: tuple, names: list[str], dynamo: bool, opset: int,
           dynamic: bool | str = False) -> onnx.ModelProto:
    """``dynamic``: True for a symbolic batch; "seq" (TorchScript) for a symbolic batch and a symbolic second axis of
    the sequence inputs (token ids, mask, waveform), as exports for serving usually are."""
    module.eval()
    buf = io.BytesIO()
    if getattr(module, "static_batch", False):
        names_dyn: list[str] = []
    else:
        names_dyn = names
    # no torch.no_grad(): nn.MultiheadAttention would take its inference fast path, which the TorchScript
    # exporter cannot export (aten::_native_multi_head_attention)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            kw = {}
            if dynamic:
                batch = torch.export.Dim("batch", min=1, max=64)
                kw["dynamic_shapes"] = tuple({0: batch} if n in names_dyn else None for n in names)
            prog = torch.onnx.export(module, args, dynamo=True, opset_version=opset, verbose=False,
                                     input_names=names, **kw)
            model = prog.model_proto
        else:
            axes = {n: ({0: "batch", 1: "seq"} if dynamic == "seq" and n in SEQUENCE_INPUTS else {0: "batch"})
                    for n in names_dyn}
            torch.onnx.export(module, args, buf, dynamo=False, opset_version=opset, input_names=names,
                              dynamic_axes=axes)
            model = onnx.load_from_string(buf.getvalue())
    if model.ir_version > 10:
        model.ir_version = 10  # onnxruntime's ceiling on this machine; the graph is unchanged
    return model


def attention_blocks(model: onnx.ModelProto) -> int:
    """Softmax and standard Attention nodes at top level: the attention blocks an export has."""
    return sum(n.op_type in ("Softmax", "Attention") and n.domain in ("", "ai.onnx") for n in model.graph.node)
