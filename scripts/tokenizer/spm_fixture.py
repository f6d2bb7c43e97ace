#!/usr/bin/env python3
"""Writes crates/executor/tests/fixtures/spm_tokenizer.json: a small SentencePiece BPE
vocabulary (trained here, Llama-style settings: byte fallback, identity normalisation, dummy
prefix, whitespace kept) as GGUF's tokenizer.ggml.{tokens,scores,token_type} would hold it, and
what SentencePiece itself encodes a set of texts to. tandem's GGUF `llama` tokenizer must give
the same ids (crates/executor/tests/spm.rs).

    python3 -m venv /tmp/spvenv && /tmp/spvenv/bin/pip install sentencepiece==0.2.*
    /tmp/spvenv/bin/python scripts/tokenizer/spm_fixture.py
"""
import io
import json
import pathlib

import sentencepiece as spm

CORPUS = """
The quick brown fox jumps over the lazy dog. A paged KV cache stores keys and values in blocks.
Continuous batching admits new requests at every step; preemption frees blocks under pressure.
The capital of France is Paris. The capital of Italy is Rome. Numbers: 1 22 333 4096 2048.
def main():
    print("hello, world")
    return 0
Schedulers, executors and servers: tandem runs language models on GPUs and CPUs.
Tokenizers split text into pieces; SentencePiece treats the space as a symbol of its own.
""" * 4

USER_DEFINED = ["<|u|>"]

TEXTS = [
    "Hello world",
    "The capital of France is Paris.",
    " leading space",
    "two  spaces and   three",
    "new\nline\n\nand tab\there",
    "naïve café ☕ 日本語 ü",
    "1234567890",
    "def f(x):\n    return x * 2",
    "emoji 🤖 and symbols ©®",
    "",
    "a<|u|>b and <|u|> again",
]


def main() -> None:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=420,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=USER_DEFINED,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        # GGUF / llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user defined, 6 byte.
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif sp.id_to_piece(i) in USER_DEFINED:
            types.append(4)
        else:
            types.append(1)
    cases = [{"text": t, "ids": sp.encode(t)} for t in TEXTS]
    out = {
        "generator": f"sentencepiece {spm.__version__}, scripts/tokenizer/spm_fixture.py",
        "tokens": tokens,
        "scores": scores,
        "token_type": types,
        "cases": cases,
    }
    path = pathlib.Path(__file__).resolve().parents[2] / "crates/executor/tests/fixtures/spm_tokenizer.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=0) + "\n")
    print(f"wrote {path}: {len(tokens)} pieces, {len(cases)} cases")


if __name__ == "__main__":
    main()
