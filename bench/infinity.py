#!/usr/bin/env python3
"""infinity (infinity-emb, the Python embedding server users would otherwise pick) as a peer of the benchmark.

Runs in its own virtualenv (bench/requirements-infinity.txt; bench/run.sh installs it). In order, one thing at a time:
  1. builds a random-weight Hugging Face CLIP ViT-B/32 directory once (the openai/clip-vit-base-patch32
     configuration values via transformers' CLIPConfig, seeded init, save_pretrained; a CLIPImageProcessor
     config; a small BPE tokenizer learned here from a few sentences, so everything loads offline);
  2. model-only: the same model alone in torch (get_image_features, fp32, batch 8, THREADS threads) on
     already preprocessed photos, as infinity's torch engine calls it;
  3. starts `infinity_emb v2 --engine torch --device cpu --batch-size 8` on loopback, records the time from
     start to /health answering and the server's RSS once loaded;
  4. records what infinity does with a data URI sent WITHOUT `modality` (what Elasticsearch sends): a photo,
     and a 64x64 image, compared with the image and text vectors of the same input;
  5. runs `sightline bench --target-url ... --target-dialect infinity` (the same load generator, photos and
     patterns as the Sightline run), then stops the server.
Prints ONE JSON line (stdout) for `sightline bench --infinity FILE`; progress goes to stderr.

Usage: python bench/infinity.py --photos DIR --work DIR --sightline BIN [--duration 30s] [--threads N]
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import version

SERVED_NAME = "random-clip-vit-b-32"
BATCH = 8
CORPUS = [
    "a photo of a cat", "a red car in the snow", "eine rote Katze im Schnee", "mountains at sunset",
    "a dog on the beach", "the city at night", "un chat noir sur un canapé", "flowers in a garden",
]


def log(msg: str) -> None:
    print(f"infinity: {msg}", file=sys.stderr, flush=True)


def build_model(out: str) -> None:
    """Random-weight CLIP ViT-B/32 with the real configuration values; idempotent."""
    if os.path.exists(os.path.join(out, "config.json")):
        return
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

    log(f"building a random-weight CLIP ViT-B/32 in {out}")
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=0, eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32, hidden_act="quick_gelu"),
        projection_dim=512, logit_scale_init_value=2.6592,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(out, safe_serialization=True)

    # CLIP's tokenizer pipeline (lower case, its split pattern, byte-level BPE with "</w>"), learned from CORPUS.
    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|startoftext|>", "<|pad|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", tok.token_to_id("<|startoftext|>")),
                        ("<|endoftext|>", tok.token_to_id("<|endoftext|>"))])
    tok_file = os.path.join(out, "tokenizer.json")
    tok.save(tok_file)
    tokenizer = CLIPTokenizerFast(tokenizer_file=tok_file, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                  unk_token="<|endoftext|>", pad_token="<|pad|>", model_max_length=77)
    images = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                resample=3, do_center_crop=True, image_mean=[0.48145466, 0.4578275, 0.40821073],
                                image_std=[0.26862954, 0.26130258, 0.27577711])
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(out)


def model_only(model_dir: str, photos: list[bytes], threads: int, seconds: float) -> float:
    """get_image_features alone on preprocessed tensors, batch 8, fp32: what infinity's torch engine runs."""
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    torch.set_num_threads(threads)
    model = AutoModel.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    imgs = [Image.open(io.BytesIO(p)).convert("RGB") for p in photos[:BATCH]]
    pixels = processor(images=imgs, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        model.get_image_features(pixel_values=pixels)  # warm-up
        images, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model.get_image_features(pixel_values=pixels)
            images += len(imgs)
    return images / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def rss_mib(pid: int) -> float:
    """Resident memory of the server and its children (uvicorn may fork)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            pass
    return total / 1024


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / ((sum(x * x for x in a) ** 0.5) * (sum(y * y for y in b) ** 0.5))


def without_modality(url: str, photo: bytes) -> list[str]:
    """What comes back for data URIs sent as Elasticsearch sends them: no `modality` field."""
    from PIL import Image

    facts = []
    uri = "data:image/jpeg;base64," + base64.b64encode(photo).decode()
    status, body = post(f"{url}/embeddings", {"input": [uri], "model": SERVED_NAME})
    detail = body.get("detail") or body.get("error") or body
    kind = detail[0].get("type") if isinstance(detail, list) and detail and isinstance(detail[0], dict) else ""
    facts.append(f"a photo ({len(uri) / 1e6:.1f} MB data URI): {status} {kind}".rstrip())

    buf = io.BytesIO()
    Image.open(io.BytesIO(photo)).convert("RGB").resize((64, 64)).save(buf, "JPEG", quality=90)
    small = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    got = {}
    for name, extra in [("none", {}), ("image", {"modality": "image"}), ("text", {"modality": "text"})]:
        status, body = post(f"{url}/embeddings", {"input": [small], "model": SERVED_NAME, **extra})
        got[name] = (status, body["data"][0]["embedding"] if status == 200 else None)
    status, vec = got["none"]
    if status != 200:
        facts.append(f"a 64x64 JPEG ({len(small)} characters): {status}")
    else:
        to_text = cosine(vec, got["text"][1]) if got["text"][1] else float("nan")
        to_image = cosine(vec, got["image"][1]) if got["image"][1] else float("nan")
        what = "the text vector of the base64 string" if to_text > 0.9999 else "not the text vector"
        facts.append(f"a 64x64 JPEG ({len(small)} characters): {status}, {what} "
                     f"(cosine {to_text:.4f} to it, {to_image:.4f} to the image's vector)")
    return facts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", required=True)
    ap.add_argument("--work", required=True, help="folder for the model directory")
    ap.add_argument("--sightline", required=True, help="the sightline binary (its `bench --target-url`)")
    ap.add_argument("--duration", default="30s")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    seconds = float(args.duration.rstrip("s"))

    model_dir = os.path.join(args.work, "clip-vit-b-32-random")
    build_model(model_dir)
    names = sorted(n for n in os.listdir(args.photos) if n.lower().endswith((".jpg", ".jpeg")))
    photos = [open(os.path.join(args.photos, n), "rb").read() for n in names]
    mo = model_only(model_dir, photos, args.threads, seconds)
    log(f"model-only {mo:.2f} images/s (torch {version('torch')}, {args.threads} threads)")

    port = free_port()
    env = dict(os.environ, DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="0", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    cmd = [os.path.join(os.path.dirname(sys.executable), "infinity_emb"), "v2", "--model-id", model_dir,
           "--served-model-name", SERVED_NAME, "--engine", "torch", "--device", "cpu",
           "--batch-size", str(BATCH), "--host", "127.0.0.1", "--port", str(port)]
    started = time.perf_counter()
    server = subprocess.Popen(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = started + 300
        while True:
            if server.poll() is not None:
                sys.exit(f"infinity exited with {server.returncode} before it was ready")
            if time.perf_counter() > deadline:
                sys.exit("infinity did not answer /health within 300 s")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.05)
        ready_s = time.perf_counter() - started
        loaded = rss_mib(server.pid)
        log(f"ready after {ready_s:.1f} s, {loaded:.0f} MiB")
        facts = without_modality(url, photos[0])
        for fact in facts:
            log(f"without `modality`: {fact}")
        out = subprocess.run([args.sightline, "bench", "--photos", args.photos, "--duration", args.duration,
                              "--target-url", url, "--target-dialect", "infinity", "--target-model", SERVED_NAME],
                             check=True, stdout=subprocess.PIPE, text=True).stdout
        patterns = json.loads(out.strip().splitlines()[-1])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    print(json.dumps({
        "server": "infinity", "version": version("infinity_emb"), "engine": "torch", "device": "cpu",
        "batch": BATCH, "threads": args.threads, "torch": version("torch"), "transformers": version("transformers"),
        "model_only_images_per_s": round(mo, 2), "rss_mib": round(loaded, 1), "ready_s": round(ready_s, 2),
        "without_modality": facts, "patterns": patterns,
    }))


if __name__ == "__main__":
    main()
