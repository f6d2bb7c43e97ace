#!/usr/bin/env python3
"""Independent numpy forward of a llama-architecture GGUF model, for tandem's parity test.

Reads the GGUF with the `gguf` package (its own dequantization, not candle's), runs the Llama
forward in float64 with llama.cpp's conventions (GGUF Q/K weights are permuted so RoPE rotates
adjacent pairs), and writes the last-position logits of a few prompts:

    python3 scripts/parity/reference_forward.py MODEL.gguf crates/executor/tests/fixtures/smollm2_parity

produces `<out>.json` (prompts, argmax, shapes) and `<out>.bin` (float32 little-endian logits).
Requires: pip install gguf numpy
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field(reader, key):
    return reader.fields[key].contents()


def load(path):
    r = GGUFReader(path)
    w = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float64)
        # numpy shape is ggml's reversed: (rows = out features, cols = in features)
        w[t.name] = a.reshape([int(x) for x in reversed(t.shape)]) if a.ndim > 1 else a
    cfg = {
        "layers": int(field(r, "llama.block_count")),
        "heads": int(field(r, "llama.attention.head_count")),
        "kv_heads": int(field(r, "llama.attention.head_count_kv")),
        "eps": float(field(r, "llama.attention.layer_norm_rms_epsilon")),
        "rope_base": float(field(r, "llama.rope.freq_base")),
    }
    return w, cfg


def rms_norm(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def rope_adjacent(x, pos, base):
    """x: (T, heads, d); rotate pairs (2i, 2i+1) by pos * base^(-2i/d)."""
    d = x.shape[-1]
    inv = base ** (-np.arange(0, d, 2) / d)
    ang = pos[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def forward(w, cfg, ids):
    T = len(ids)
    emb = w["token_embd.weight"]
    x = emb[ids]
    H, KV = cfg["heads"], cfg["kv_heads"]
    d = x.shape[1] // H
    pos = np.arange(T, dtype=np.float64)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg["layers"]):
        p = f"blk.{i}."
        h = rms_norm(x, w[p + "attn_norm.weight"], cfg["eps"])
        q = (h @ w[p + "attn_q.weight"].T).reshape(T, H, d)
        k = (h @ w[p + "attn_k.weight"].T).reshape(T, KV, d)
        v = (h @ w[p + "attn_v.weight"].T).reshape(T, KV, d)
        q, k = rope_adjacent(q, pos, cfg["rope_base"]), rope_adjacent(k, pos, cfg["rope_base"])
        out = np.empty((T, H, d))
        for hh in range(H):
            kv = hh // (H // KV)
            s = q[:, hh, :] @ k[:, kv, :].T / np.sqrt(d) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            out[:, hh, :] = s @ v[:, kv, :]
        x = x + out.reshape(T, H * d) @ w[p + "attn_output.weight"].T
        h = rms_norm(x, w[p + "ffn_norm.weight"], cfg["eps"])
        g = h @ w[p + "ffn_gate.weight"].T
        u = h @ w[p + "ffn_up.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ w[p + "ffn_down.weight"].T
    x = rms_norm(x, w["output_norm.weight"], cfg["eps"])
    head = w.get("output.weight", emb)  # tied embeddings when there is no output tensor
    return x[-1] @ head.T


PROMPTS = [
    [1, 9690, 198, 2683, 314, 253, 5356, 20409, 2],
    [504, 3575, 282, 4649, 314],
    [1, 4093, 198] + [(i * 7919) % 49000 + 17 for i in range(37)],
]


def main():
    model, out = sys.argv[1], sys.argv[2]
    w, cfg = load(model)
    logits = [forward(w, cfg, np.array(p)) for p in PROMPTS]
    np.concatenate(logits).astype("<f4").tofile(out + ".bin")
    meta = {
        "model": model.rsplit("/", 1)[-1],
        "prompts": PROMPTS,
        "vocab": int(logits[0].shape[0]),
        "argmax": [int(np.argmax(l)) for l in logits],
        "dtype": "float32 little-endian, prompts concatenated, last position only",
        "reference": "scripts/parity/reference_forward.py (numpy float64, gguf-package dequantization)",
    }
    json.dump(meta, open(out + ".json", "w"), indent=1)
    print(json.dumps({"argmax": meta["argmax"], "max_abs_logit": float(max(np.abs(l).max() for l in logits))}))


if __name__ == "__main__":
    main()
