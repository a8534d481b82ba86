"""The pass manager: normalize → passes to a fixed point → cleanup → an ONNX model again.

Model-level facts are restored from the original after graphsurgeon's export: ir_version (never raised),
opset imports (plus ``fuser`` v1 when fused nodes exist), producer, metadata, doc strings, graph
input/output declarations (names, dtypes, symbolic dims) and each surviving node's doc string and
metadata. Fused nodes get their provenance (doc_string, ``fuser.pattern``, ``fuser.source_nodes``).
From IR 4 on, an initializer that is also a graph input is a default the caller may override: the passes
see it as the graph input it is (nothing folds into it) and it comes back unchanged.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from fuser.passes import PASS_ORDER, pass_names

from .context import PassContext, provenance_props
from .errors import InputError
from .external import LARGE_BYTES, export_external, graph_constant_bytes
from .fused import DOMAIN, DOMAIN_VERSION, FusionRecord, parse_op_type
from .io import temp_name
from .normalize import import_graph, name_graph_nodes, normalize, unique_node_names

MAX_ROUNDS = 8
FOLDED_KEY = "fuser.folded"  # node metadata: JSON list of the original nodes folded into its weights


@dataclass
class PipelineResult:
    model: onnx.ModelProto
    fusions: list[FusionRecord]
    rounds: int
    pass_counts: dict[str, int] = field(default_factory=dict)
    data_path: Path | None = None  # external weights of a > 2 GiB result (see run_pipeline)


def default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    raise InputError("model imports no default-domain opset")


def run_pipeline(model: onnx.ModelProto, target: str = "hip", skip: tuple[str, ...] = (),
                 workdir: str | os.PathLike | None = None, base_dir: str | os.PathLike | None = None) -> PipelineResult:
    """Run the passes. A result too large for one protobuf (> ~2 GiB of weights) is exported with its
    weights in ``<workdir>/<token>.data`` (a fresh temporary folder when ``workdir`` is None):
    ``PipelineResult.data_path`` then names that file, and the caller owns it."""
    unknown = set(skip) - set(pass_names()) - {"cleanup"}
    if unknown:
        raise InputError(f"unknown pass {sorted(unknown)[0]!r}; passes: {', '.join(pass_names())}")
    original = model  # never mutated: graphsurgeon copies what it changes
    opset = default_opset(model)
    if _overridable(model):  # rare: work on a copy without them, so the passes see plain graph inputs
        work = onnx.ModelProto()
        work.CopyFrom(model)
        _drop_overridable_initializers(work)
        model = work
    bdir = str(base_dir) if base_dir is not None else None
    if "normalize" in skip:
        graph = import_graph(model, bdir)
        name_graph_nodes(graph)
    else:
        graph = normalize(model, bdir)
    # graphsurgeon keeps a reference to the model's opset_import and appends to it on export: detach
    graph.import_domains = [onnx.helper.make_opsetid(o.domain, o.version) for o in model.opset_import]
    if target == "onnx" and opset >= 23:
        # the standard Attention op (onnxruntime's) does not broadcast its mask over the query axis: keep the terms
        # at the shape the export built, so each fused node can become one Attention
        skip = (*skip, "attention_terms")
    ctx = PassContext(graph, opset)
    counts: dict[str, int] = {}
    rounds = 0
    for rounds in range(1, MAX_ROUNDS + 1):  # noqa: B007 (rounds is reported)
        changed = 0
        for p in PASS_ORDER:
            if p.NAME in skip:
                continue
            n = p.run(ctx)
            if n:
                graph.cleanup(remove_unused_graph_inputs=False).toposort()
                counts[p.NAME] = counts.get(p.NAME, 0) + n
                changed += n
        if not changed:
            break
    if "cleanup" not in skip:
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    data_path = None
    if graph_constant_bytes(graph) > LARGE_BYTES:
        folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="onnx-fuse-"))
        data_path = Path(temp_name(folder, ".onnx-fuse-", ".data"))
    out = finalize(graph, ctx, original, data_path)
    if target == "onnx":
        out = inline_fused(out)
    return PipelineResult(out, ctx.fusions, rounds, counts, data_path)


def finalize(graph: gs.Graph, ctx: PassContext, original: onnx.ModelProto,
             data_path: Path | None = None) -> onnx.ModelProto:
    out = gs.export_onnx(graph, do_type_check=False) if data_path is None else export_external(graph, data_path)
    # model-level fields from the original (not CopyFrom(original): that would copy every weight)
    for fld in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(out, fld, getattr(original, fld))
    del out.metadata_props[:]
    out.metadata_props.extend(original.metadata_props)
    del out.training_info[:]
    out.training_info.extend(original.training_info)
    # graph-level declarations exactly as the original had them
    out.graph.name = original.graph.name
    out.graph.doc_string = original.graph.doc_string
    _restore_io(out.graph.input, original.graph.input)
    _restore_io(out.graph.output, original.graph.output)
    _restore_overridable_initializers(out, original)
    if original.ir_version < 4:
        # IR<4 requires every initializer to be listed among the graph inputs
        listed = {i.name for i in out.graph.input}
        for init in out.graph.initializer:
            if init.name not in listed:
                out.graph.input.append(onnx.helper.make_tensor_value_info(
                    init.name, init.data_type, list(init.dims)))
    # node doc strings / metadata of nodes that survived (by the names normalize gave them: unnamed and
    # duplicate-named nodes of the original included)
    names = unique_node_names([(n.name, n.op_type) for n in original.graph.node])
    by_name = dict(zip(names, original.graph.node, strict=True))
    records = {r.fused_node: r for r in ctx.fusions}
    folded = folded_into(ctx.fusions)
    for n in out.graph.node:
        src = by_name.get(n.name)
        if src is not None and n.op_type == src.op_type:
            n.doc_string = src.doc_string
            del n.metadata_props[:]
            n.metadata_props.extend(src.metadata_props)
        rec = records.get(n.name)
        if rec is not None and n.domain == DOMAIN:
            n.doc_string = rec.doc_line()
            if folded.get(n.name):
                n.doc_string += f"; {', '.join(folded[n.name])} folded into its weights first"
            set_props(n, provenance_props(rec))
        if folded.get(n.name):
            set_props(n, {FOLDED_KEY: json.dumps(folded[n.name])})
            if not n.doc_string:  # a plain node whose weights changed; a doc string of its own stays
                n.doc_string = f"onnx-fuse: {', '.join(folded[n.name])} folded into the weights of {n.op_type}"
    used = {n.op_type for n in out.graph.node if n.domain == DOMAIN}
    del out.opset_import[:]
    out.opset_import.extend(o for o in original.opset_import if o.domain != DOMAIN)
    del out.functions[:]
    out.functions.extend(f for f in original.functions if f.domain != DOMAIN)
    if used:
        out.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
        for op_type in sorted(used):
            # fused nodes of an earlier run (a fused model fed back in) are not in ctx.fused_types
            ftype = ctx.fused_types.get(op_type) or parse_op_type(op_type)
            if ftype is not None:
                out.functions.append(ftype.function(ctx.opset))
    # keep functions of ours that survived from an earlier run (idempotence on fused models)
    have = {f.name for f in out.functions if f.domain == DOMAIN}
    for f in original.functions:
        if f.domain == DOMAIN and f.name in used and f.name not in have:
            out.functions.append(f)
    return out


def folded_into(fusions: list[FusionRecord]) -> dict[str, list[str]]:
    """Node name → the original nodes folded into its weights, in the order of the rewrites.

    A fold (BN, per-channel Mul/Add into a Conv/Gemm/MatMul) keeps the target node and its name; when that
    node is later fused (``conv1`` → ``conv1+relu3``) what was folded into it goes along to the fused node.
    """
    out: dict[str, list[str]] = {}
    for rec in fusions:
        if not rec.kernel:  # a fold: the target keeps its name, the others disappear into its weights
            acc = out.setdefault(rec.fused_node, [])
            for s in rec.source_nodes:
                if s != rec.fused_node:
                    acc.extend([s, *out.pop(s, [])])
        else:
            acc = [x for s in rec.source_nodes for x in out.pop(s, [])]
            if acc:
                out[rec.fused_node] = acc
    return {k: v for k, v in out.items() if v}


def set_props(node: onnx.NodeProto, props: dict[str, str]) -> None:
    """Set metadata_props keys on ``node``, replacing earlier values of the same keys (a re-run)."""
    keep = [p for p in node.metadata_props if p.key not in props]
    del node.metadata_props[:]
    node.metadata_props.extend(keep)
    for k, v in props.items():
        node.metadata_props.add(key=k, value=v)


def _overridable(model: onnx.ModelProto) -> set[str]:
    """From IR 4 on, an initializer that is also a graph input is a default the caller may override: not a
    constant (IR < 4 lists every initializer as an input; there they are weights)."""
    if model.ir_version < 4:
        return set()
    declared = {i.name for i in model.graph.input}
    return {t.name for t in model.graph.initializer if t.name in declared}


def _drop_overridable_initializers(work: onnx.ModelProto) -> None:
    """The passes see overridable initializers as the graph inputs they are (nothing folds into them)."""
    names = _overridable(work)
    if names:
        keep = [t for t in work.graph.initializer if t.name not in names]
        del work.graph.initializer[:]
        work.graph.initializer.extend(keep)


def _restore_overridable_initializers(out: onnx.ModelProto, original: onnx.ModelProto) -> None:
    names = _overridable(original) & {i.name for i in out.graph.input}
    have = {t.name for t in out.graph.initializer}
    out.graph.initializer.extend(t for t in original.graph.initializer if t.name in names and t.name not in have)


def _restore_io(new, old) -> None:
    old_by_name = {v.name: v for v in old}
    for i, v in enumerate(new):
        if v.name in old_by_name:
            new[i].CopyFrom(old_by_name[v.name])


def inline_fused(model: onnx.ModelProto) -> onnx.ModelProto:
    """``--target onnx``: replace every fused node by its standard-op body (no ``fuser`` domain)."""
    from onnx import inliner

    from .fused_attention import standard_attention_nodes

    standard_attention_nodes(model, default_opset(model))  # one Attention-23 where it is exact
    used = {n.op_type for n in model.graph.node if n.domain == DOMAIN}
    ids = [(f.domain, f.name) for f in model.functions if f.domain == DOMAIN]
    if not ids:
        return model
    if not used:  # nothing left to inline: drop our functions and the domain
        kept = [f for f in model.functions if f.domain != DOMAIN]
        del model.functions[:]
        model.functions.extend(kept)
        others = [o for o in model.opset_import if o.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(others)
        return model
    standard_group_norm_bodies(model)
    out = inliner.inline_selected_functions(model, ids)
    _name_inlined(model.graph.node, out.graph.node)
    del out.opset_import[:]
    out.opset_import.extend(o for o in model.opset_import if o.domain != DOMAIN)
    out.ir_version = model.ir_version
    return out


def standard_group_norm_bodies(model: onnx.ModelProto) -> None:
    """``--target onnx`` at opset >= 21: each ``FusedGroupNorm<Act>`` body becomes one standard
    GroupNormalization-21 (+ its activation), so inlining writes that op instead of the decomposition.
    Below 21 the decomposed body stays (opset 18's GroupNormalization is deprecated: per-group scale).
    onnxruntime has no native kernel for GroupNormalization: it expands the op into primitive nodes."""
    opset = default_opset(model)
    if opset < 21:
        return
    for f in model.functions:
        ftype = parse_op_type(f.name) if f.domain == DOMAIN else None
        if ftype is not None and ftype.base == "GroupNorm":
            f.CopyFrom(ftype.function(opset, standard_group_norm=True))


def _name_inlined(before, after) -> None:
    """Give the nodes that replaced each inlined fused node names and provenance: ``<fused name>/<op_type>``
    (a namespace Model Explorer groups by), the fused node's ``fuser.*`` metadata plus ``fuser.fused_node``,
    and a one-line doc string. The inliner puts each body where its call was, in order."""
    taken = {n.name for n in after if n.name}
    j = 0
    for b in before:
        if b.domain != DOMAIN:
            j += 1
            continue
        props = {p.key: p.value for p in b.metadata_props if p.key.startswith("fuser.")}
        props["fuser.fused_node"] = b.name
        pattern = props.get("fuser.pattern", "fused")
        sources = ", ".join(json.loads(props.get("fuser.source_nodes", "[]")))
        pending = {o for o in b.output if o}
        while pending and j < len(after):
            a = after[j]
            j += 1
            base = f"{b.name}/{a.op_type}"
            name, k = base, 1
            while name in taken:
                name, k = f"{base}_{k}", k + 1
            taken.add(name)
            a.name = name
            a.doc_string = f"onnx-fuse {pattern}: part of {b.name} (fused {sources}), inlined as standard ops"
            set_props(a, props)
            pending -= set(a.output)
    # anything left unnamed (a body the inliner laid out differently) still gets a unique, stable name
    for i, a in enumerate(after):
        if not a.name:
            base = f"{a.op_type}_{i}"
            name, k = base, 1
            while name in taken:
                name, k = f"{base}_{k}", k + 1
            taken.add(name)
            a.name = name
