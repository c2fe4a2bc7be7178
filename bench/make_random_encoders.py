#!/usr/bin/env python3
"""Same-architecture, RANDOM-weight model bundle for throughput benchmarks -- built without torch.

The ONNX graphs are written node by node with the `onnx` package (opset 17, IR 8), so the only requirements are
numpy, onnx, onnxruntime (for --quantize / --check) and tokenizers (see bench/requirements.txt).

  vision_model.onnx   CLIP ViT-B/32 vision tower + visual_projection (== openai/clip-vit-base-patch32 image path)
                      pixel_values f32 [batch_size,3,224,224] -> image_embeds f32 [batch_size,512]
                      Conv 32x32/32 (768 ch, no bias) -> [CLS]+49 patches -> +pos(50) -> pre-LN ->
                      12 pre-LN layers (768, 12 heads, MLP 3072, quick_gelu, eps 1e-5) -> post-LN(CLS) -> 768x512
  text_model.onnx     DistilBERT-base-multilingual-cased (vocab 119547, 512 positions, 6 post-LN layers, 12 heads,
                      FFN 3072, GELU(erf), eps 1e-12)
                      input_ids, attention_mask i64 [batch_size,sequence_length]
                        -> last_hidden_state f32 [batch_size,sequence_length,768]
  dense.safetensors   linear.weight F32 [512,768]  (2_Dense of the ST model; Sightline mean-pools and projects)
  tokenizer.json      BERT WordPiece (cased), mBERT special ids, synthetic 119547-entry vocabulary (speed only)
  sightline.json      the bundle manifest

Weights and biases are N(0, 0.02) from a seeded generator (LayerNorm gamma 1, beta 0), so every output is finite and the
files are byte-for-byte reproducible. Speed does not depend on weight values.

Usage:
  python bench/make_random_encoders.py --out bench/work/bundle [--quantize] [--check] [--bench | --bench-only]
    --quantize  also writes bench/work/bundle-int8/ (quantize_dynamic QInt8 per-channel; tokenizer and dense are
                hard links to the fp32 bundle's files)
    --check     numpy reference forward pass vs onnxruntime, padding invariance, parameter and MAC counts
    --bench     a quick model-only throughput check (onnxruntime, 2 threads, batch 8, ~4 s per model)
    --bench-only  the same check on already written bundles, nothing rebuilt
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
STD = 0.02

# CLIP ViT-B/32 (openai/clip-vit-base-patch32 vision_config)
V_HIDDEN, V_LAYERS, V_HEADS, V_MLP, V_PATCH, V_SIZE, V_PROJ, V_EPS = 768, 12, 12, 3072, 32, 224, 512, 1e-5
V_TOKENS = (V_SIZE // V_PATCH) ** 2 + 1  # 50
# DistilBERT-base-multilingual-cased (config.json of sentence-transformers/clip-ViT-B-32-multilingual-v1)
T_VOCAB, T_POS, T_HIDDEN, T_LAYERS, T_HEADS, T_FFN, T_EPS, T_OUT = 119547, 512, 768, 6, 12, 3072, 1e-12, 512

MANIFEST = {
    "name": "random-clip-vit-b-32",
    "dimensions": 512,
    "max_seq_len": 128,
    "tokenizer": "tokenizer.json",
    "image": {"onnx": "vision_model.onnx", "input": "pixel_values", "output": "image_embeds"},
    "text": {"onnx": "text_model.onnx", "input_ids": "input_ids", "attention_mask": "attention_mask",
             "output": "last_hidden_state", "pooling": "mean", "dense": "dense.safetensors"},
    "preprocess": {"size": 224, "mean": [0.48145466, 0.4578275, 0.40821073],
                   "std": [0.26862954, 0.26130258, 0.27577711], "resize": "shortest_edge", "crop": "center",
                   "interpolation": "bicubic"},
}


# ------------------------------------------------------------------------------------------------------------------
# graph builder
# ------------------------------------------------------------------------------------------------------------------
class G:
    """Tiny helper: collects nodes and initializers, generates unique names."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list = []
        self.inits: list = []
        self.weights: dict[str, np.ndarray] = {}  # kept for the numpy reference check
        self.n = 0

    def _name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def weight(self, name: str, shape, kind: str = "normal") -> str:
        if kind == "normal":
            arr = (self.rng.standard_normal(shape, dtype=np.float32) * np.float32(STD)).astype(np.float32)
        elif kind == "ones":
            arr = np.ones(shape, np.float32)
        else:
            arr = np.zeros(shape, np.float32)
        self.weights[name] = arr
        return self.const(name, arr)

    def op(self, op_type: str, inputs, hint: str | None = None, out: str | None = None, **attrs) -> str:
        out = out or self._name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out + "_node", **attrs))
        return out

    # building blocks ------------------------------------------------------------------------------------------
    def linear(self, x: str, prefix: str, n_in: int, n_out: int, bias: bool = True) -> str:
        w = self.weight(f"{prefix}.weight_t", (n_in, n_out))  # stored [in, out] for MatMul
        y = self.op("MatMul", [x, w], f"{prefix}.mm")
        if bias:
            # small random bias (not zeros), so --check exercises the Add
            y = self.op("Add", [y, self.weight(f"{prefix}.bias", (n_out,))], f"{prefix}.out")
        return y

    def layer_norm(self, x: str, prefix: str, dim: int, eps: float, out: str | None = None) -> str:
        g = self.weight(f"{prefix}.weight", (dim,), "ones")
        b = self.weight(f"{prefix}.bias", (dim,), "zeros")
        return self.op("LayerNormalization", [x, g, b], f"{prefix}.ln", out=out, axis=-1, epsilon=eps)

    def attention(self, x: str, prefix: str, dim: int, heads: int, add_mask: str | None) -> str:
        hd = dim // heads
        q = self.linear(x, f"{prefix}.q_proj", dim, dim)
        q = self.op("Mul", [q, self.const(f"{prefix}.scale", np.array(hd ** -0.5, np.float32))], f"{prefix}.qs")
        k = self.linear(x, f"{prefix}.k_proj", dim, dim)
        v = self.linear(x, f"{prefix}.v_proj", dim, dim)
        split = self.const(f"{prefix}.split_shape", np.array([0, 0, heads, hd], np.int64))
        q = self.op("Transpose", [self.op("Reshape", [q, split])], f"{prefix}.qh", perm=[0, 2, 1, 3])
        k = self.op("Transpose", [self.op("Reshape", [k, split])], f"{prefix}.kt", perm=[0, 2, 3, 1])
        v = self.op("Transpose", [self.op("Reshape", [v, split])], f"{prefix}.vh", perm=[0, 2, 1, 3])
        s = self.op("MatMul", [q, k], f"{prefix}.scores")  # [B,H,T,T]
        if add_mask is not None:
            s = self.op("Add", [s, add_mask], f"{prefix}.masked")
        p = self.op("Softmax", [s], f"{prefix}.probs", axis=-1)
        c = self.op("MatMul", [p, v], f"{prefix}.ctx")  # [B,H,T,hd]
        c = self.op("Transpose", [c], f"{prefix}.ctx_t", perm=[0, 2, 1, 3])
        c = self.op("Reshape", [c, self.const(f"{prefix}.merge_shape", np.array([0, 0, dim], np.int64))])
        return self.linear(c, f"{prefix}.out_proj", dim, dim)

    def model(self, inputs, outputs, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "main", inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sightline-bench",
                              doc_string=doc)
        m.ir_version = IR_VERSION
        return m


# ------------------------------------------------------------------------------------------------------------------
# vision
# ------------------------------------------------------------------------------------------------------------------
def build_vision(seed: int) -> tuple[onnx.ModelProto, G]:
    g = G(np.random.default_rng(seed))
    d = V_HIDDEN
    x = g.op("Conv", ["pixel_values", g.weight("patch_embedding.weight", (d, 3, V_PATCH, V_PATCH))], "patch",
             kernel_shape=[V_PATCH, V_PATCH], strides=[V_PATCH, V_PATCH])  # [B,768,7,7]
    x = g.op("Reshape", [x, g.const("patch_flat_shape", np.array([0, d, -1], np.int64))])  # [B,768,49]
    x = g.op("Transpose", [x], "patches", perm=[0, 2, 1])  # [B,49,768]
    # [CLS] token expanded to the batch: shape [B,1,768]
    shp = g.op("Shape", ["pixel_values"])
    b = g.op("Slice", [shp, g.const("sl0", np.array([0], np.int64)), g.const("sl1", np.array([1], np.int64))], "b")
    cls_shape = g.op("Concat", [b, g.const("cls_tail", np.array([1, d], np.int64))], "cls_shape", axis=0)
    cls = g.weight("class_embedding", (1, 1, d))
    cls = g.op("Expand", [cls, cls_shape], "cls")
    x = g.op("Concat", [cls, x], "tokens", axis=1)  # [B,50,768]
    x = g.op("Add", [x, g.weight("position_embedding", (V_TOKENS, d))], "embedded")
    x = g.layer_norm(x, "pre_layrnorm", d, V_EPS)
    for i in range(V_LAYERS):
        p = f"layers.{i}"
        h = g.layer_norm(x, f"{p}.layer_norm1", d, V_EPS)
        x = g.op("Add", [x, g.attention(h, f"{p}.self_attn", d, V_HEADS, None)], f"{p}.res1")
        h = g.layer_norm(x, f"{p}.layer_norm2", d, V_EPS)
        h = g.linear(h, f"{p}.mlp.fc1", d, V_MLP)
        # quick_gelu: x * sigmoid(1.702 x)
        s = g.op("Sigmoid", [g.op("Mul", [h, g.const(f"{p}.qg", np.array(1.702, np.float32))])])
        h = g.op("Mul", [h, s], f"{p}.quick_gelu")
        h = g.linear(h, f"{p}.mlp.fc2", V_MLP, d)
        x = g.op("Add", [x, h], f"{p}.res2")
    cls_out = g.op("Gather", [x, g.const("cls_index", np.array(0, np.int64))], "cls_out", axis=1)  # [B,768]
    pooled = g.layer_norm(cls_out, "post_layernorm", d, V_EPS)
    g.op("MatMul", [pooled, g.weight("visual_projection.weight_t", (d, V_PROJ))], out="image_embeds")
    m = g.model([helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch_size", 3, V_SIZE, V_SIZE])],
                [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch_size", V_PROJ])],
                "random-weight CLIP ViT-B/32 vision tower + visual_projection (benchmark stand-in)")
    return m, g


# ------------------------------------------------------------------------------------------------------------------
# text
# ------------------------------------------------------------------------------------------------------------------
def build_text(seed: int) -> tuple[onnx.ModelProto, G]:
    g = G(np.random.default_rng(seed))
    d = T_HIDDEN
    word = g.op("Gather", [g.weight("word_embeddings", (T_VOCAB, d)), "input_ids"], "word", axis=0)  # [B,L,768]
    shp = g.op("Shape", ["input_ids"])
    seq = g.op("Slice", [shp, g.const("sl_1", np.array([1], np.int64)), g.const("sl_2", np.array([2], np.int64))],
               "seq_len")
    pos = g.op("Slice", [g.weight("position_embeddings", (T_POS, d)), g.const("pos_start", np.array([0], np.int64)),
                         seq, g.const("pos_axis", np.array([0], np.int64))], "pos")  # [L,768]
    x = g.op("Add", [word, pos], "embedded")
    x = g.layer_norm(x, "embeddings.LayerNorm", d, T_EPS)
    # additive mask [B,1,1,L]: 0 where attended, finfo(float32).min where padded (== HF masked_fill(min))
    m = g.op("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    m = g.op("Sub", [g.const("one", np.array(1.0, np.float32)), m], "mask_inv")
    m = g.op("Mul", [m, g.const("neg_min", np.array(np.finfo(np.float32).min, np.float32))], "mask_add")
    m = g.op("Unsqueeze", [m, g.const("mask_axes", np.array([1, 2], np.int64))], "mask_4d")
    for i in range(T_LAYERS):
        p = f"transformer.layer.{i}"
        a = g.attention(x, f"{p}.attention", d, T_HEADS, m)
        x = g.layer_norm(g.op("Add", [a, x], f"{p}.sa_res"), f"{p}.sa_layer_norm", d, T_EPS)
        h = g.linear(x, f"{p}.ffn.lin1", d, T_FFN)
        # GELU (erf): 0.5 x (1 + erf(x / sqrt 2)) -- ORT fuses this into Gelu
        e = g.op("Erf", [g.op("Div", [h, g.const(f"{p}.sqrt2", np.array(np.sqrt(2.0), np.float32))])])
        e = g.op("Add", [e, g.const(f"{p}.g1", np.array(1.0, np.float32))])
        h = g.op("Mul", [g.op("Mul", [h, e]), g.const(f"{p}.g05", np.array(0.5, np.float32))], f"{p}.gelu")
        h = g.linear(h, f"{p}.ffn.lin2", T_FFN, d)
        out = "last_hidden_state" if i == T_LAYERS - 1 else None
        x = g.layer_norm(g.op("Add", [h, x], f"{p}.ffn_res"), f"{p}.output_layer_norm", d, T_EPS, out=out)
    dyn = ["batch_size", "sequence_length"]
    mdl = g.model([helper.make_tensor_value_info("input_ids", TensorProto.INT64, dyn),
                   helper.make_tensor_value_info("attention_mask", TensorProto.INT64, dyn)],
                  [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, dyn + [d])],
                  "random-weight DistilBERT-base-multilingual-cased (benchmark stand-in)")
    return mdl, g


def write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [off, off + arr.nbytes]}
        blobs.append(arr.tobytes())
        off += arr.nbytes
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ------------------------------------------------------------------------------------------------------------------
# tokenizer: real mBERT pipeline, synthetic vocabulary of exactly 119547 entries
# ------------------------------------------------------------------------------------------------------------------
def build_vocab(size: int = T_VOCAB) -> dict[str, int]:
    vocab: dict[str, int] = {"[PAD]": 0}
    for i in range(1, 100):
        vocab[f"[unused{i}]"] = i
    vocab.update({"[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103})

    def add(t: str):
        if len(vocab) < size:
            vocab.setdefault(t, len(vocab))

    chars = [chr(c) for c in range(33, 127)]
    chars += [chr(c) for c in range(0xC0, 0x250) if chr(c).isalpha()]  # Latin-1 / Latin Extended
    chars += [chr(c) for c in range(0x391, 0x3CA) if chr(c).isalpha()]  # Greek
    chars += [chr(c) for c in range(0x410, 0x450)]  # Cyrillic
    chars += [chr(c) for c in range(0x3041, 0x3097)] + [chr(c) for c in range(0x30A1, 0x30FB)]  # kana
    chars += [chr(c) for c in range(0x4E00, 0xA000)]  # CJK Unified Ideographs (the real vocab has ~13k of them)
    for ch in chars:
        add(ch)
    for ch in chars[:400]:
        add("##" + ch)
    # syllable-like pieces: words and continuations built from onset+vowel(+coda), both cases
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "ch",
              "st", "tr", "sch", "sp", "pl", "gr", "th", "sh", "kr", "fl"]
    vowels = ["a", "e", "i", "o", "u", "y", "ä", "ö", "ü", "é", "ei", "ie", "ou", "au", "ea"]
    codas = ["", "n", "r", "s", "t", "l", "m", "ng", "nd", "st", "ch", "ck", "x", "k", "rt"]
    syll = [o + v + c for o in onsets for v in vowels for c in codas]  # 6750
    for s in syll:
        add(s)
        add(s.capitalize())
        add("##" + s)
    for a in syll:  # two-syllable words fill the rest
        for b in syll:
            if len(vocab) >= size:
                return vocab
            add(a + b)
    assert len(vocab) == size, len(vocab)
    return vocab


def build_tokenizer(path: str) -> int:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = build_vocab()
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                                     max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 101), ("[SEP]", 102)])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.save(path)
    return tok.get_vocab_size()


# ------------------------------------------------------------------------------------------------------------------
# numpy reference (checks that the ONNX graph computes the intended architecture)
# ------------------------------------------------------------------------------------------------------------------
def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _attn(x, W, p, heads, add_mask=None):
    B, T, d = x.shape
    hd = d // heads
    lin = lambda n: x @ W[f"{p}.{n}.weight_t"] + W[f"{p}.{n}.bias"]  # noqa: E731
    q = lin("q_proj").reshape(B, T, heads, hd).transpose(0, 2, 1, 3) * hd ** -0.5
    k = lin("k_proj").reshape(B, T, heads, hd).transpose(0, 2, 1, 3)
    v = lin("v_proj").reshape(B, T, heads, hd).transpose(0, 2, 1, 3)
    s = q @ k.transpose(0, 1, 3, 2)
    if add_mask is not None:
        s = s + add_mask
    s = np.exp(s - s.max(-1, keepdims=True))
    s = s / s.sum(-1, keepdims=True)
    c = (s @ v).transpose(0, 2, 1, 3).reshape(B, T, d)
    return c @ W[f"{p}.out_proj.weight_t"] + W[f"{p}.out_proj.bias"]


def ref_vision(W, px):
    px = px.astype(np.float64)
    W = {k: v.astype(np.float64) for k, v in W.items()}
    B, P, n = px.shape[0], V_PATCH, V_SIZE // V_PATCH
    patches = px.reshape(B, 3, n, P, n, P).transpose(0, 2, 4, 1, 3, 5).reshape(B, n * n, 3 * P * P)
    x = patches @ W["patch_embedding.weight"].reshape(V_HIDDEN, -1).T  # row-major patches: Conv's order
    x = np.concatenate([np.broadcast_to(W["class_embedding"], (B, 1, V_HIDDEN)), x], 1) + W["position_embedding"]
    x = _ln(x, W["pre_layrnorm.weight"], W["pre_layrnorm.bias"], V_EPS)
    for i in range(V_LAYERS):
        p = f"layers.{i}"
        x = x + _attn(_ln(x, W[f"{p}.layer_norm1.weight"], W[f"{p}.layer_norm1.bias"], V_EPS), W,
                      f"{p}.self_attn", V_HEADS)
        h = _ln(x, W[f"{p}.layer_norm2.weight"], W[f"{p}.layer_norm2.bias"], V_EPS)
        h = h @ W[f"{p}.mlp.fc1.weight_t"] + W[f"{p}.mlp.fc1.bias"]
        h = h / (1 + np.exp(-1.702 * h))
        x = x + h @ W[f"{p}.mlp.fc2.weight_t"] + W[f"{p}.mlp.fc2.bias"]
    pooled = _ln(x[:, 0], W["post_layernorm.weight"], W["post_layernorm.bias"], V_EPS)
    return pooled @ W["visual_projection.weight_t"]


def ref_text(W, ids, mask):
    from math import erf

    verf = np.vectorize(erf)
    W = {k: v.astype(np.float64) for k, v in W.items()}
    L = ids.shape[1]
    x = W["word_embeddings"][ids] + W["position_embeddings"][:L]
    x = _ln(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"], T_EPS)
    add = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
    for i in range(T_LAYERS):
        p = f"transformer.layer.{i}"
        x = _ln(_attn(x, W, f"{p}.attention", T_HEADS, add) + x, W[f"{p}.sa_layer_norm.weight"],
                W[f"{p}.sa_layer_norm.bias"], T_EPS)
        h = x @ W[f"{p}.ffn.lin1.weight_t"] + W[f"{p}.ffn.lin1.bias"]
        h = 0.5 * h * (1 + verf(h / np.sqrt(2)))
        h = h @ W[f"{p}.ffn.lin2.weight_t"] + W[f"{p}.ffn.lin2.bias"]
        x = _ln(h + x, W[f"{p}.output_layer_norm.weight"], W[f"{p}.output_layer_norm.bias"], T_EPS)
    return x


# ------------------------------------------------------------------------------------------------------------------
def session(path: str, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def timeit(sess, feeds, seconds: float) -> float:
    sess.run(None, feeds)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        sess.run(None, feeds)
        n += 1
    return (time.perf_counter() - t0) / n


def count_macs(path: str, dims: dict[str, int]) -> int:
    """Multiply-accumulates of the MatMul and Conv nodes, with the symbolic input dims fixed to `dims`."""
    m = onnx.load(path)
    for i in m.graph.input:
        for d in i.type.tensor_type.shape.dim:
            if d.dim_param in dims:
                d.dim_value = dims[d.dim_param]
    m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    shp = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
           for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
    shp.update({t.name: list(t.dims) for t in m.graph.initializer})
    tot = 0
    for n in m.graph.node:
        if n.op_type == "MatMul":
            tot += int(np.prod(shp[n.output[0]])) * shp[n.input[0]][-1]
        elif n.op_type == "Conv":
            tot += int(np.prod(shp[n.output[0]])) * int(np.prod(shp[n.input[1]][1:]))
    return tot


def save(model: onnx.ModelProto, path: str) -> None:
    onnx.save_model(model, path)
    onnx.checker.check_model(path, full_check=True)
    print(f"{path}: {os.path.getsize(path) / 1e6:.1f} MB", flush=True)


def link_or_copy(src: str, dst: str) -> None:
    if os.path.exists(dst):
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def run_bench(bundles) -> None:
    """Model-only throughput: onnxruntime, 2 intra-op threads, ORT_ENABLE_ALL, batch 8, a few seconds each."""
    rng = np.random.default_rng(7)
    px = rng.standard_normal((8, 3, V_SIZE, V_SIZE)).astype(np.float32)
    i16 = rng.integers(1000, T_VOCAB, (8, 16)).astype(np.int64)
    for d, vf, tf in bundles:
        dt = timeit(session(os.path.join(d, vf)), {"pixel_values": px}, 4.0)
        print(f"BENCH {vf} threads=2 batch=8: {dt * 1000:.0f} ms/batch = {8 / dt:.1f} img/s", flush=True)
        dt = timeit(session(os.path.join(d, tf)), {"input_ids": i16, "attention_mask": np.ones_like(i16)}, 3.0)
        print(f"BENCH {tf} threads=2 batch=8 L=16: {dt * 1000:.1f} ms/batch = {8 / dt:.0f} texts/s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/work/bundle")
    ap.add_argument("--int8-out", default=None, help="int8 bundle dir (default: OUT-int8)")
    ap.add_argument("--quantize", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--bench-only", action="store_true", help="only --bench the existing OUT (and OUT-int8)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = a.out.rstrip("/")
    if a.bench_only:
        q = (a.int8_out or out + "-int8").rstrip("/")
        bundles = [(out, "vision_model.onnx", "text_model.onnx")]
        if os.path.exists(os.path.join(q, "vision_model_int8.onnx")):
            bundles.append((q, "vision_model_int8.onnx", "text_model_int8.onnx"))
        run_bench(bundles)
        return
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()

    vis, gv = build_vision(a.seed)
    nv = sum(w.size for w in gv.weights.values())
    print(f"vision params: {nv:,} (bias-free conv and projection)", flush=True)
    save(vis, os.path.join(out, "vision_model.onnx"))
    del vis

    txt, gt = build_text(a.seed + 1)
    nt = sum(w.size for w in gt.weights.values())
    save(txt, os.path.join(out, "text_model.onnx"))
    del txt
    dense = (np.random.default_rng(a.seed + 2).standard_normal((T_OUT, T_HIDDEN), dtype=np.float32)
             * np.float32(STD)).astype(np.float32)
    write_safetensors(os.path.join(out, "dense.safetensors"), {"linear.weight": dense})
    print(f"text params: {nt + dense.size:,} (distilbert {nt:,} + dense {dense.size:,})")
    nvocab = build_tokenizer(os.path.join(out, "tokenizer.json"))
    print(f"tokenizer.json: vocab {nvocab}")
    with open(os.path.join(out, "sightline.json"), "w") as f:
        json.dump(MANIFEST, f, indent=2)
        f.write("\n")
    print(f"fp32 bundle written in {time.perf_counter() - t0:.0f} s", flush=True)

    bundles = [(out, "vision_model.onnx", "text_model.onnx")]
    if a.quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q = (a.int8_out or out + "-int8").rstrip("/")
        os.makedirs(q, exist_ok=True)
        for name in ("vision_model", "text_model"):
            src, dst = os.path.join(out, f"{name}.onnx"), os.path.join(q, f"{name}_int8.onnx")
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True)
            print(f"{dst}: {os.path.getsize(dst) / 1e6:.1f} MB", flush=True)
        for f in ("dense.safetensors", "tokenizer.json"):
            link_or_copy(os.path.join(out, f), os.path.join(q, f))
        man = json.loads(json.dumps(MANIFEST))
        man["name"] += "-int8"
        man["image"]["onnx"] = "vision_model_int8.onnx"
        man["text"]["onnx"] = "text_model_int8.onnx"
        with open(os.path.join(q, "sightline.json"), "w") as f:
            json.dump(man, f, indent=2)
            f.write("\n")
        bundles.append((q, "vision_model_int8.onnx", "text_model_int8.onnx"))

    rng = np.random.default_rng(123)
    if a.check:
        assert nv == 87_849_216, nv  # open_clip model_profile.csv / model.md 4.1
        assert nt == 134_734_080, nt  # DistilBERT-base-multilingual-cased
        px = rng.standard_normal((2, 3, V_SIZE, V_SIZE)).astype(np.float32)
        ids = rng.integers(1000, T_VOCAB, (2, 12)).astype(np.int64)
        ids[:, 0], ids[:, -1] = 101, 102
        mask = np.ones_like(ids)
        mask[1, 8:], ids[1, 8:] = 0, 0
        ids[1, 7] = 102
        ref_v, ref_t = ref_vision(gv.weights, px), ref_text(gt.weights, ids, mask)
        for d, vf, tf in bundles:
            got = session(os.path.join(d, vf)).run(None, {"pixel_values": px})[0]
            ts = session(os.path.join(d, tf))
            hid = ts.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            alone = ts.run(None, {"input_ids": ids[1:, :8], "attention_mask": mask[1:, :8]})[0]
            assert np.isfinite(got).all() and np.isfinite(hid).all()
            ev = np.abs(got - ref_v).max() / np.abs(ref_v).max()
            et = np.abs(hid - ref_t)[mask.astype(bool)].max()
            pad = np.abs(alone[0] - hid[1, :8]).max()
            cos = float(((got * ref_v).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref_v, axis=1))).min())
            print(f"CHECK {vf}: image_embeds {got.shape} |x|max {np.abs(got).max():.3f}, max rel err vs numpy "
                  f"{ev:.2e}, min cos {cos:.5f}")
            print(f"CHECK {tf}: last_hidden_state {hid.shape}, max abs err vs numpy (unpadded tokens) {et:.2e}, "
                  f"padded-vs-unpadded {pad:.2e}")
            if "int8" not in vf:
                assert ev < 1e-4 and et < 1e-3 and pad < 1e-4, (ev, et, pad)
        del ref_v, ref_t
        gv_macs = count_macs(os.path.join(out, "vision_model.onnx"), {"batch_size": 1})
        gt_macs = {L: count_macs(os.path.join(out, "text_model.onnx"), {"batch_size": 1, "sequence_length": L})
                   for L in (16, 128)}
        print(f"CHECK compute: image {gv_macs / 1e9:.2f} GMAC/img (model.md: 4.41), text "
              + ", ".join(f"L={L} {v / 1e9:.2f} GMAC" for L, v in gt_macs.items()) + " (model.md: 0.68, 5.59)")
        assert abs(gv_macs / 1e9 - 4.41) < 0.01, gv_macs
    del gv, gt

    if a.bench:
        run_bench(bundles)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
