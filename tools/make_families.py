#!/usr/bin/env python3
"""Write tiny random-weight stand-ins for the open_clip model families `sightline model pull` knows besides the default:

    tests/fixtures/tiny-xlmr-openclip/   like immich-app/XLM-Roberta-Base-ViT-B-32__laion5b_s13b_b90k
                                         (open_clip `xlm-roberta-base-ViT-B-32`, pretrained `laion5b_s13b_b90k`)
    tests/fixtures/tiny-nllb-siglip/     like immich-app/nllb-clip-base-siglip__v1
                                         (open_clip `nllb-clip-base-siglip`, pretrained `v1`)

Each directory has the layout of Immich's published exports, so `sightline model init --from-open-clip DIR` reads it
(Immich's exporter: immich-app/immich machine-learning/export/immich_model_exporter/exporters/onnx/models/openclip.py;
Immich's loader: machine-learning/immich_ml/models/clip/{visual,textual}.py):

    config.json                   the open_clip model config (`open_clip.get_model_config(name)`)
    visual/model.onnx             input `image` f32 [1, 3, S, S] -> output `embedding` f32 [1, D], L2-normalised
                                  (exported from `model.encode_image(image, normalize=True)`; batch fixed to 1 because
                                  the exporter's `dynamic_axes` are commented out)
    visual/preprocess_cfg.json    `open_clip.get_model_preprocess_cfg(model)`: size, mode, mean, std, interpolation,
                                  resize_mode, fill_color
    textual/model.onnx            input `text` int32 [1, C] -> output `embedding` f32 [1, D], L2-normalised; no
                                  attention mask input: open_clip's HFTextEncoder derives it as `x != pad_token_id`
    textual/tokenizer.json        the Hugging Face tokenizer of `text_cfg.hf_tokenizer_name`
    textual/tokenizer_config.json `pad_token` (Immich pads to the context length with its id)
    sightline.json                the bundle manifest, so the directory also loads as a Sightline bundle

What is real: tensor names, dtypes, static shapes, the preprocessing settings (open_clip `pretrained.py`: `_pcfg` for
XLM-R = OpenAI mean/std, bicubic, `shortest`; `_slpcfg` for NLLB-SigLIP = 0.5 mean/std, bicubic, `squash`; image size
224 / 384 and embed_dim 512 / 768 from the model configs; context length 77, open_clip's default, since neither
config sets one), the tokenizer kind and pipeline shape (XLM-R: SentencePiece Unigram, `<s> $A </s>`; NLLB:
SentencePiece BPE, `eng_Latn $A </s>`; both `<pad>` = 1), the pooling (XLM-R mean over `x != pad`, NLLB first
token). What is tiny: the weights (seeded random), the vocabularies (a few hundred pieces), and the towers (one
patchify conv and one residual tanh layer).

Output is byte-identical on every run. Usage:  .venv/bin/python tools/make_families.py [--out tests/fixtures]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

import make_fixtures

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]  # open_clip constants.py OPENAI_DATASET_MEAN
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
INCEPTION_MEAN = [0.5, 0.5, 0.5]  # open_clip constants.py INCEPTION_MEAN / INCEPTION_STD (SigLIP)
INCEPTION_STD = [0.5, 0.5, 0.5]
CONTEXT = 77  # open_clip CLIPTextCfg.context_length default; Immich: text_cfg.get("context_length", 77)
HIDDEN = 32
PATCH_CHANNELS = 4
SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}  # XLM-R and NLLB share these ids
LANG_CODES = ["eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "zho_Hans"]


@dataclass(frozen=True)
class Family:
    dir: str
    model: str  # open_clip model name
    pretrained: str
    image_size: int
    patch: int  # tiny patchify stride: image_size / patch patches per side
    dim: int
    mean: list
    std: list
    resize_mode: str
    tokenizer: str  # "unigram" | "bpe"
    pooler: str  # "mean" | "cls"
    config: dict  # open_clip model config, as published (model_configs/<model>.json)
    seed: int


FAMILIES = [
    Family("tiny-xlmr-openclip", "xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k", 224, 32, 512,
           OPENAI_MEAN, OPENAI_STD, "shortest", "unigram", "mean",
           {"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
            "text_cfg": {"hf_model_name": "xlm-roberta-base", "hf_tokenizer_name": "xlm-roberta-base",
                         "proj": "mlp", "pooler_type": "mean_pooler"}},
           20250101),
    Family("tiny-nllb-siglip", "nllb-clip-base-siglip", "v1", 384, 64, 768,
           INCEPTION_MEAN, INCEPTION_STD, "squash", "bpe", "cls",
           {"embed_dim": 768, "custom_text": True, "init_logit_bias": -10,
            "vision_cfg": {"image_size": 384, "timm_model_name": "vit_base_patch16_siglip_384",
                           "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"},
            "text_cfg": {"hf_model_name": "facebook/nllb-200-distilled-600M",
                         "hf_tokenizer_name": "facebook/nllb-200-distilled-600M",
                         "hf_proj_type": "linear", "hf_pooler_type": "cls_pooler"}},
           20250102),
]

# Words of the golden texts' languages; every piece also exists as single characters, so unknown words split.
WORDS = ("a dog in the snow cat on beach at night red car street small near and with of photo sleeping "
         "eine katze schläft im schnee hund strand der die das un perro en la playa gato con le chat dort sur neige "
         "кошка спит на снегу собака").split()
CHARS = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789äöüßéèêàçñ"
         "абвгдежзийклмнопрстуфхцчшщъыьэюя一只猫在雪地里睡觉の中で眠る.,!?'-")


def tokenizer_unigram() -> Tokenizer:
    """XLM-R's shape: SentencePiece Unigram, Metaspace, `<s> $A </s>`, `<mask>` last (xlm-roberta-base tokenizer.json;
    the real normaliser is a precompiled charsmap, NFKC-like, then `Replace(" {2,}", " ")`)."""
    pieces = [(tok, 0.0) for tok in SPECIALS]
    seen = set(SPECIALS)

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    add("\u2581", -3.0)
    for word in WORDS:
        add("\u2581" + word, -2.0)
        add(word, -2.5)
    for ch in CHARS:
        add("\u2581" + ch, -6.0)
        add(ch, -7.0)
    add("<mask>", 0.0)
    tok = Tokenizer(models.Unigram(pieces, unk_id=SPECIALS["<unk>"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", SPECIALS["<s>"]), ("</s>", SPECIALS["</s>"])])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.add_special_tokens(list(SPECIALS) + ["<mask>"])
    return tok


def tokenizer_bpe() -> Tokenizer:
    """NLLB's shape: SentencePiece BPE, Metaspace, language codes as added tokens, `eng_Latn $A </s>` (the non-legacy
    NllbTokenizer template with the default source language)."""
    vocab = dict(SPECIALS)
    merges = []

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    add("\u2581")
    for ch in CHARS:
        add(ch)
    for word in WORDS:
        # merges build "▁word" left to right, so every prefix is a token and only these chains apply
        prefix = "\u2581"
        for ch in word:
            if ch not in vocab:
                add(ch)
            if (prefix, ch) not in merges:
                merges.append((prefix, ch))
            prefix += ch
            add(prefix)
    for code in LANG_CODES:
        add(code)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="eng_Latn $A </s>", pair="eng_Latn $A $B </s>",
        special_tokens=[("eng_Latn", vocab["eng_Latn"]), ("</s>", SPECIALS["</s>"])])
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.add_special_tokens(list(SPECIALS) + LANG_CODES)
    return tok


def normalise(x: str, out: str) -> list:
    """`out = x / ReduceL2(x)`: open_clip's `encode_*(normalize=True)` (F.normalize; no zero vectors here)."""
    return [helper.make_node("ReduceL2", [x], [x + "_norm"], axes=[-1], keepdims=1),
            helper.make_node("Div", [x, x + "_norm"], [out])]


def build_visual(f: Family, rng: np.random.Generator, path: Path) -> None:
    n_patch = (f.image_size // f.patch) ** 2
    w = {"patch_w": rng.standard_normal((PATCH_CHANNELS, 3, f.patch, f.patch)) / np.sqrt(3 * f.patch * f.patch),
         "patch_b": 0.01 * rng.standard_normal(PATCH_CHANNELS),
         "proj_w": rng.standard_normal((PATCH_CHANNELS * n_patch, f.dim)) / np.sqrt(PATCH_CHANNELS * n_patch),
         "proj_b": 0.01 * rng.standard_normal(f.dim)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    nodes = [
        helper.make_node("Conv", ["image", "patch_w", "patch_b"], ["patches"],
                         kernel_shape=[f.patch, f.patch], strides=[f.patch, f.patch]),
        helper.make_node("Tanh", ["patches"], ["patches_act"]),
        helper.make_node("Flatten", ["patches_act"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "proj_w"], ["proj"]),
        helper.make_node("Add", ["proj", "proj_b"], ["raw"]),
        *normalise("raw", "embedding"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_open_clip_visual",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, f.image_size, f.image_size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, f.dim])], inits)
    make_fixtures._save_model(graph, path, f"tiny random stand-in for open_clip {f.model} encode_image(normalize=True)")


def build_textual(f: Family, vocab_size: int, rng: np.random.Generator, path: Path) -> None:
    w = {"tok_emb": rng.standard_normal((vocab_size, HIDDEN)),
         "pos_emb": 0.5 * rng.standard_normal((CONTEXT, HIDDEN)),
         "mix_w": rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN),
         "mix_b": 0.1 * rng.standard_normal(HIDDEN),
         "proj_w": rng.standard_normal((HIDDEN, f.dim)) / np.sqrt(HIDDEN)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    inits += [numpy_helper.from_array(np.array(vocab_size, np.int64), "vocab"),
              numpy_helper.from_array(np.array(SPECIALS["<pad>"], np.int64), "pad_id"),
              numpy_helper.from_array(np.array([-1], np.int64), "axes_last")]
    nodes = [
        helper.make_node("Cast", ["text"], ["ids"], to=TensorProto.INT64),
        # open_clip HFTextEncoder.forward: attn_mask = (x != self.config.pad_token_id).long()
        helper.make_node("Equal", ["ids", "pad_id"], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["not_pad"]),
        helper.make_node("Cast", ["not_pad"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axes_last"], ["mask3"]),
        helper.make_node("Mod", ["ids", "vocab"], ["ids_mod"], fmod=0),
        helper.make_node("Gather", ["tok_emb", "ids_mod"], ["h_tok"], axis=0),
        helper.make_node("Add", ["h_tok", "pos_emb"], ["x"]),
        helper.make_node("MatMul", ["x", "mix_w"], ["mix"]),
        helper.make_node("Add", ["mix", "mix_b"], ["mix_pre"]),
        helper.make_node("Tanh", ["mix_pre"], ["mix_act"]),
        # the mask also enters the states, as attention does: pad positions change nothing that is pooled
        helper.make_node("Add", ["x", "mix_act"], ["h_all"]),
        helper.make_node("Mul", ["h_all", "mask3"], ["h"]),
    ]
    if f.pooler == "mean":  # open_clip MeanPooler: (x * mask).sum(1) / mask.sum(1)
        inits += [numpy_helper.from_array(np.array([1], np.int64), "axes1"),
                  numpy_helper.from_array(np.array(1e-9, np.float32), "eps")]
        nodes += [helper.make_node("ReduceSum", ["h", "axes1"], ["sum_h"], keepdims=0),
                  helper.make_node("ReduceSum", ["mask3", "axes1"], ["count"], keepdims=0),
                  helper.make_node("Max", ["count", "eps"], ["count_c"]),
                  helper.make_node("Div", ["sum_h", "count_c"], ["pooled"])]
    else:  # open_clip ClsPooler: the first token's state
        inits += [numpy_helper.from_array(np.array(0, np.int64), "first")]
        nodes += [helper.make_node("Gather", ["h", "first"], ["pooled"], axis=1)]
    nodes += [helper.make_node("MatMul", ["pooled", "proj_w"], ["raw"]), *normalise("raw", "embedding")]
    graph = helper.make_graph(
        nodes, "tiny_open_clip_textual",
        [helper.make_tensor_value_info("text", TensorProto.INT32, [1, CONTEXT])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, f.dim])], inits)
    make_fixtures._save_model(graph, path, f"tiny random stand-in for open_clip {f.model} encode_text(normalize=True)")


def manifest(f: Family) -> dict:
    """What `sightline model init --from-open-clip` writes for this directory (tests/contract/families.rs checks it)."""
    return {
        "name": f.dir,
        "dimensions": f.dim,
        "max_seq_len": CONTEXT,
        "tokenizer": "textual/tokenizer.json",
        "image": {"onnx": "visual/model.onnx", "input": "image", "output": "embedding"},
        "text": {"onnx": "textual/model.onnx", "input_ids": "text", "attention_mask": None, "output": "embedding",
                 "pooling": "none", "tokenizer_kind": "unigram" if f.tokenizer == "unigram" else "bpe",
                 "clean": "whitespace", "padding": "fixed", "pad_id": SPECIALS["<pad>"]},
        "preprocess": {"size": f.image_size, "mean": f.mean, "std": f.std,
                       "resize": "shortest_edge" if f.resize_mode == "shortest" else "squash",
                       "crop": "center_round" if f.resize_mode == "shortest" else "none",
                       "interpolation": "bicubic"},
        "outputs_normalized": True,
    }


def dump(obj, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_family(out: Path, f: Family) -> None:
    (out / "visual").mkdir(parents=True, exist_ok=True)
    (out / "textual").mkdir(parents=True, exist_ok=True)
    tok = tokenizer_unigram() if f.tokenizer == "unigram" else tokenizer_bpe()
    tok.save(str(out / "textual" / "tokenizer.json"))
    rng = np.random.default_rng(f.seed)
    build_visual(f, rng, out / "visual" / "model.onnx")
    build_textual(f, tok.get_vocab_size(), rng, out / "textual" / "model.onnx")
    dump(f.config, out / "config.json")
    dump({"size": f.image_size, "mode": "RGB", "mean": f.mean, "std": f.std, "interpolation": "bicubic",
          "resize_mode": f.resize_mode, "fill_color": 0}, out / "visual" / "preprocess_cfg.json")
    dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
          "model_max_length": 512}, out / "textual" / "tokenizer_config.json")
    dump(manifest(f), out / "sightline.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=make_fixtures.DEFAULT_OUT, help="fixtures folder")
    args = ap.parse_args()
    for f in FAMILIES:
        out = args.out / f.dir
        write_family(out, f)
        total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        assert total < 2 << 20, f"{out}: {total} bytes, over the 2 MB budget"
        print(f"{out}: {total:,} bytes")


if __name__ == "__main__":
    main()
