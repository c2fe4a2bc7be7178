#!/usr/bin/env python3
"""Write the two tiny random-weight model bundles used by Sightline's tests.

    tests/fixtures/tiny-clip/         text "form a": the graph outputs the pooled, projected sentence embedding
    tests/fixtures/tiny-clip-tokens/  text "form b": the graph outputs token states [N, L, H]; Sightline does the
                                      masked mean pooling and applies `dense.safetensors` itself

Both bundles are built from the SAME weights, so they must produce the same vectors; the image encoder is the same
file in both. The models mimic only the I/O contract of the real encoders (model.md §3.2), not their numerics:

    image_encoder.onnx  pixel_values f32 [batch_size,3,224,224] -> image_embeds f32 [batch_size,512]
                        32x32/32 patchify conv (like ViT-B/32) -> tanh -> dense over all 7x7 patches, so flips,
                        transposes, 1-px shifts and BGR order all change the output.
    text_encoder.onnx   input_ids, attention_mask i64 [batch_size,sequence_length] ->
                        form a: text_embeds f32 [batch_size,512]
                        form b: last_hidden_state f32 [batch_size,sequence_length,32]
                        token embedding of (id mod vocab) + position embedding (128 positions), then a residual
                        tanh layer so the states are not linear in the embeddings. Padding positions get a large
                        offset: a consumer that forgets the mask when pooling gets clearly different vectors.
    dense.safetensors   (form b only) `linear.weight` F32 [512, 32], nn.Linear layout (y = x @ W.T, no bias) like the
                        real `2_Dense/model.safetensors`.
    tokenizer.json      tiny multilingual WordPiece with the real mBERT pipeline and special ids.
    sightline.json      the bundle manifest read by `src/engine/bundle.rs`.

    tests/fixtures/odd-graphs/        one-op graphs `sightline model init` must refuse or catch (tests/contract/
                                      model_init.rs): int32 token inputs, only `token_type_ids`, a raw-pixel NHWC
                                      image input, two candidate image outputs, and a text graph whose declared
                                      [batch, 512] output is really [batch, seq] (caught by the smoke test).

Output is byte-identical on every run (seeded RNG, no timestamps). No download, no torch.
Usage:  .venv/bin/python tools/make_fixtures.py [--out tests/fixtures]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save as safetensors_bytes
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "fixtures"

SEED = 20240611
OPSET = 17
IR_VERSION = 8  # newer `onnx` writes IR 10+, which older ONNX Runtime releases refuse (model.md §3.2)
DIM = 512  # output dimension of both encoders
HIDDEN = 32  # width of the tiny text "transformer" (768 in the real DistilBERT)
MAX_POS = 128  # position embeddings == max_seq_len of the real model
IMG = 224
PATCH = 32
PATCH_CHANNELS = 4

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

FORM_A = "tiny-clip"
FORM_B = "tiny-clip-tokens"


# ----------------------------------------------------------------------------------------------------------------
# Weights: drawn once, shared by both bundles
# ----------------------------------------------------------------------------------------------------------------
def draw_weights(vocab_size: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """All random weights, in a fixed draw order (changing the order changes every golden file)."""
    rng = np.random.default_rng(seed)

    def normal(shape, scale):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    n_patch = (IMG // PATCH) ** 2
    return {
        "patch_w": normal((PATCH_CHANNELS, 3, PATCH, PATCH), 1 / np.sqrt(3 * PATCH * PATCH)),
        "patch_b": normal((PATCH_CHANNELS,), 0.01),
        "proj_w": normal((PATCH_CHANNELS * n_patch, DIM), 1 / np.sqrt(PATCH_CHANNELS * n_patch)),
        "proj_b": normal((DIM,), 0.01),
        "tok_emb": normal((vocab_size, HIDDEN), 1.0),
        "pos_emb": normal((MAX_POS, HIDDEN), 0.5),
        "mix_w": normal((HIDDEN, HIDDEN), 1 / np.sqrt(HIDDEN)),
        "mix_b": normal((HIDDEN,), 0.1),
        "pad_offset": normal((HIDDEN,), 3.0),
        # nn.Linear layout [out, in]: exactly what 2_Dense/model.safetensors stores under `linear.weight`
        "dense": normal((DIM, HIDDEN), 1 / np.sqrt(HIDDEN)),
    }


def _save_model(graph: onnx.GraphProto, path: Path, doc: str) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sightline tools/make_fixtures.py", doc_string=doc)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def build_image_encoder(w: dict[str, np.ndarray], path: Path) -> None:
    inits = [numpy_helper.from_array(w[k], k) for k in ("patch_w", "patch_b", "proj_w", "proj_b")]
    nodes = [
        helper.make_node("Conv", ["pixel_values", "patch_w", "patch_b"], ["patches"],
                         kernel_shape=[PATCH, PATCH], strides=[PATCH, PATCH]),  # [B,4,7,7]
        helper.make_node("Tanh", ["patches"], ["patches_act"]),
        helper.make_node("Flatten", ["patches_act"], ["flat"], axis=1),  # [B,196]
        helper.make_node("MatMul", ["flat", "proj_w"], ["proj"]),
        helper.make_node("Add", ["proj", "proj_b"], ["image_embeds"]),  # [B,512], not normalised
    ]
    graph = helper.make_graph(
        nodes, "tiny_clip_vision",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch_size", 3, IMG, IMG])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch_size", DIM])],
        inits)
    _save_model(graph, path, "tiny random stand-in for CLIP ViT-B/32 vision tower + visual_projection")


def build_text_encoder(w: dict[str, np.ndarray], path: Path, pooled: bool) -> None:
    """pooled=False: form b (token states). pooled=True: form a = the same graph + mean pooling + Dense."""
    def const(name, arr):
        return numpy_helper.from_array(np.asarray(arr), name)

    vocab_size = w["tok_emb"].shape[0]
    inits = [
        const("tok_emb", w["tok_emb"]), const("pos_emb", w["pos_emb"]),
        const("mix_w", w["mix_w"]), const("mix_b", w["mix_b"]),
        const("vocab", np.array(vocab_size, np.int64)),
        const("zero1", np.array([0], np.int64)), const("one1", np.array([1], np.int64)),
        const("two1", np.array([2], np.int64)), const("axes_last", np.array([-1], np.int64)),
        const("one_f", np.array(1.0, np.float32)), const("pad_offset", w["pad_offset"]),
    ]
    state = "last_hidden_state"
    nodes = [
        # ids mod vocab: the tiny model also accepts ids of the real 119 547-token tokenizer
        helper.make_node("Mod", ["input_ids", "vocab"], ["ids_mod"], fmod=0),
        helper.make_node("Gather", ["tok_emb", "ids_mod"], ["h_tok"], axis=0),  # [B,L,H]
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        helper.make_node("Slice", ["ids_shape", "one1", "two1"], ["seq_len"]),  # [L]
        helper.make_node("Slice", ["pos_emb", "zero1", "seq_len", "zero1"], ["h_pos"]),  # [L,H]
        helper.make_node("Add", ["h_tok", "h_pos"], ["x"]),
        # residual tanh layer: x + tanh(x @ W + b)
        helper.make_node("MatMul", ["x", "mix_w"], ["mix"]),
        helper.make_node("Add", ["mix", "mix_b"], ["mix_pre"]),
        helper.make_node("Tanh", ["mix_pre"], ["mix_act"]),
        helper.make_node("Add", ["x", "mix_act"], ["h"]),
        # padding positions get a large offset (a real encoder leaves them non-zero too), so a consumer that
        # forgets the mask in the pooling gets clearly different vectors
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axes_last"], ["mask3"]),  # [B,L,1]
        helper.make_node("Sub", ["one_f", "mask3"], ["pad3"]),
        helper.make_node("Mul", ["pad3", "pad_offset"], ["pad_h"]),
        helper.make_node("Add", ["h", "pad_h"], [state]),  # [B,L,H]
    ]
    if pooled:
        inits += [const("dense_wT", np.ascontiguousarray(w["dense"].T)),  # [H,512]
                  const("axes1", np.array([1], np.int64)), const("eps", np.array(1e-9, np.float32))]
        nodes += [
            # sentence-transformers Pooling (mean) + Dense(bias=False, Identity), model.md §1.1
            helper.make_node("Mul", [state, "mask3"], ["h_masked"]),
            helper.make_node("ReduceSum", ["h_masked", "axes1"], ["sum_h"], keepdims=0),  # [B,H]
            helper.make_node("ReduceSum", ["mask3", "axes1"], ["count"], keepdims=0),  # [B,1]
            helper.make_node("Max", ["count", "eps"], ["count_c"]),
            helper.make_node("Div", ["sum_h", "count_c"], ["pooled"]),
            helper.make_node("MatMul", ["pooled", "dense_wT"], ["text_embeds"]),  # [B,512]
        ]
        output = helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch_size", DIM])
    else:
        output = helper.make_tensor_value_info(state, TensorProto.FLOAT,
                                               ["batch_size", "sequence_length", HIDDEN])
    graph = helper.make_graph(
        nodes, "tiny_mclip_text",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "sequence_length"])],
        [output], inits)
    doc = ("tiny random stand-in for DistilBERT-mBERT + mean pooling + Dense(768->512)" if pooled
           else "tiny random stand-in for DistilBERT-mBERT (token states only)")
    _save_model(graph, path, doc)


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------
# Whole words per language. Latin-script words also get a Capitalised entry. CJK ideographs are split into single
# characters by the BERT normaliser, so they are listed one by one; kana are NOT split, hence the kana pieces below.
WORDS = {
    "en": "the a an of and in on with to is are at by for from under over near this that it "
          "dog dogs cat cats snow beach palm palms tree trees car cars red blue green white black small big "
          "man woman child people street city night day sky sea water mountain house boat bird flower table "
          "sleeping sleeps running photo picture sunset river bridge",
    "de": "eine ein der die das katze hund schnee strand mit und im am auf über unter schläft "
          "straße brücke fluss haus baum vögel grün größe mädchen",
    "es": "una un el la los las perro gato nieve playa con palmeras y en dónde está niño "
          "árbol corazón canción mañana",
    "fr": "le les chat chien neige plage avec et sur dans près de noir dort arbre où "
          "élève garçon crème café forêt",
    "ru": "кошка собака снег пляж спит на в и с дерево машина красная",
}
CJK = "猫狗雪海滩树一只在地里睡觉中眠犬山川空車赤青花人女男子日月水火木的是了和大小上下红色汽车写真"
KANA = "のでるはがをにとかなたいうすきねこカメラネコイヌシャ"
ACCENTED = "äöüßÄÖÜéèêëàâçîïôûùñáíóúÉÀÇÑ"
CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ"
PUNCT = ".,!?;:'\"-()¿¡«»…、。！？"
SUFFIXES = ["##s", "##es", "##ed", "##ing", "##er", "##ly", "##n", "##e", "##a", "##o", "##en", "##t", "##z"]
EMOJI = ["🐶"]  # "🐱" is deliberately absent: it becomes [UNK]
SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}


def tokenizer_vocab() -> dict[str, int]:
    """Deterministic vocabulary; special ids equal mBERT's (model.md §0)."""
    vocab: dict[str, int] = {"[PAD]": 0}
    for i in range(1, 100):
        vocab[f"[unused{i}]"] = i
    vocab.update({k: v for k, v in SPECIALS.items() if k != "[PAD]"})

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for ch in PUNCT:
        add(ch)
    # single characters, both word-initial and continuation, so unknown words split into pieces instead of [UNK]
    for ch in "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" + ACCENTED + CYRILLIC + KANA:
        add(ch)
        add("##" + ch)
    for ch in CJK:
        add(ch)
    for lang in ("en", "de", "es", "fr", "ru"):
        for word in WORDS[lang].split():
            add(word)
            add(word[0].upper() + word[1:])
    for token in SUFFIXES + EMOJI:
        add(token)
    return vocab


def build_tokenizer(path: Path) -> int:
    tok = Tokenizer(models.WordPiece(vocab=tokenizer_vocab(), unk_token="[UNK]", continuing_subword_prefix="##",
                                     max_input_chars_per_word=100))
    # real tokenizer_config.json: do_lower_case=false, strip_accents=null, tokenize_chinese_chars=true
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", SPECIALS["[CLS]"]), ("[SEP]", SPECIALS["[SEP]"])])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(list(SPECIALS))  # as in the real file: specials are matched before normalisation
    # No truncation/padding stored, like the real tokenizer.json: Sightline sets max_length 128 and pads itself.
    tok.save(str(path))
    return tok.get_vocab_size()


# ----------------------------------------------------------------------------------------------------------------
# Bundles
# ----------------------------------------------------------------------------------------------------------------
def manifest(name: str, form_b: bool) -> dict:
    text = {"onnx": "text_encoder.onnx", "input_ids": "input_ids", "attention_mask": "attention_mask",
            "output": "last_hidden_state" if form_b else "text_embeds", "pooling": "mean" if form_b else "none"}
    if form_b:
        text["dense"] = "dense.safetensors"
    return {
        "name": name,
        "dimensions": DIM,
        "max_seq_len": MAX_POS,
        "tokenizer": "tokenizer.json",
        "image": {"onnx": "image_encoder.onnx", "input": "pixel_values", "output": "image_embeds"},
        "text": text,
        "preprocess": {"size": IMG, "mean": CLIP_MEAN, "std": CLIP_STD,
                       "resize": "shortest_edge", "crop": "center", "interpolation": "bicubic"},
    }


def write_bundle(out: Path, name: str, form_b: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = build_tokenizer(out / "tokenizer.json")
    w = draw_weights(vocab_size)
    build_image_encoder(w, out / "image_encoder.onnx")
    build_text_encoder(w, out / "text_encoder.onnx", pooled=not form_b)
    if form_b:
        (out / "dense.safetensors").write_bytes(safetensors_bytes({"linear.weight": w["dense"]}))
    (out / "sightline.json").write_text(json.dumps(manifest(name, form_b), indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# Graphs `model init` must refuse: only their signatures matter, so each is one Cast or Flatten
# ----------------------------------------------------------------------------------------------------------------
ODD_GRAPHS = "odd-graphs"


def write_odd_graphs(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tokens = ["batch", "seq"]

    def save(name, nodes, inputs, outputs, doc):
        value = helper.make_tensor_value_info
        graph = helper.make_graph(nodes, "test", [value(*i) for i in inputs], [value(*o) for o in outputs])
        _save_model(graph, out / name, doc)

    def cast(src, dst):
        return helper.make_node("Cast", [src], [dst], to=TensorProto.FLOAT)

    save("int32.onnx", [cast("input_ids", "text_embeds")],
         [("input_ids", TensorProto.INT32, tokens), ("attention_mask", TensorProto.INT32, tokens)],
         [("text_embeds", TensorProto.FLOAT, tokens)],
         "int32 token inputs (immich's M-CLIP text tower is exported like this)")
    save("token_types.onnx", [cast("token_type_ids", "text_embeds")],
         [("token_type_ids", TensorProto.INT64, tokens)],
         [("text_embeds", TensorProto.FLOAT, tokens)],
         "only token_type_ids: nothing Sightline feeds")
    nhwc = ["batch", IMG, IMG, 3]
    save("nhwc.onnx", [cast("image", "embedding")],
         [("image", TensorProto.UINT8, nhwc)], [("embedding", TensorProto.FLOAT, nhwc)],
         "a raw-pixel NHWC image graph")
    flat = ["batch", "features"]
    save("ambiguous.onnx",
         [helper.make_node("Flatten", ["x"], ["a"]), helper.make_node("Flatten", ["x"], ["b"])],
         [("x", TensorProto.FLOAT, ["batch", 3, IMG, IMG])],
         [("a", TensorProto.FLOAT, flat), ("b", TensorProto.FLOAT, flat)],
         "two 2-D outputs and no image_embeds")
    save("liar.onnx", [cast("input_ids", "text_embeds")],
         [("input_ids", TensorProto.INT64, tokens), ("attention_mask", TensorProto.INT64, tokens)],
         [("text_embeds", TensorProto.FLOAT, ["batch", DIM])],
         "declares [batch, 512] but returns [batch, seq]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixtures folder (default: tests/fixtures)")
    args = ap.parse_args()
    for name, form_b in ((FORM_A, False), (FORM_B, True)):
        bundle = args.out / name
        write_bundle(bundle, name, form_b)
        total = sum(p.stat().st_size for p in bundle.iterdir())
        print(f"{bundle}: {total:,} bytes")
    write_odd_graphs(args.out / ODD_GRAPHS)
    print(f"{args.out / ODD_GRAPHS}: {len(list((args.out / ODD_GRAPHS).iterdir()))} graphs")


if __name__ == "__main__":
    main()
