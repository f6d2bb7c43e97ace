//! SentencePiece BPE vocabularies from GGUF metadata (`tokenizer.ggml.model = llama`: Llama 1/2,
//! Mistral, TinyLlama, …) as a `tokenizers` BPE model, the way Hugging Face's
//! `LlamaConverter` turns a `tokenizer.model` into a `tokenizer.json`, with llama.cpp's rules
//! where the two differ (llama.cpp is what runs GGUF files).
//!
//! - GGUF keeps a score per piece, not merges. SentencePiece's BPE repeatedly joins the adjacent
//!   pair whose concatenation is the highest-scoring piece; the equivalent merge list is every
//!   split `(left, right)` of every normal piece whose halves are pieces too, ranked by the
//!   whole piece's score (transformers' `SentencePieceExtractor`).
//! - Spaces become `▁`, and a `▁` is prepended to the text (`add_space_prefix`) — to each
//!   stretch of text after a special token too, as llama.cpp's `is_prev_special` does.
//! - Characters outside the vocabulary fall back to `<0xXX>` byte pieces; decoding turns `▁`
//!   back into spaces and byte pieces back into UTF-8. The dummy prefix is not stripped when
//!   decoding: generated text is a continuation, so its first `▁` is a real space (vLLM's
//!   detokenizer gives the same).

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{AddedToken, Tokenizer};

use crate::ExecError;

/// GGUF token types (llama.cpp's `llama_token_type`).
pub(super) const NORMAL: i32 = 1;
pub(super) const UNKNOWN: i32 = 2;
pub(super) const CONTROL: i32 = 3;
pub(super) const USER_DEFINED: i32 = 4;

const SPACE: &str = "▁";

fn tk(e: impl Into<crate::ErrorSource>) -> ExecError {
    ExecError::Tokenizer(e.into())
}

/// The merges SentencePiece's scores imply, best first.
fn merges_from_scores(tokens: &[String], scores: &[f32], types: &[i32]) -> Vec<(String, String)> {
    let normal: HashMap<&str, usize> =
        tokens.iter().enumerate().filter(|(i, _)| types[*i] == NORMAL).map(|(i, t)| (t.as_str(), i)).collect();
    let mut ranked: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for (piece, &id) in &normal {
        for (k, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(k);
            if let (Some(&li), Some(&ri)) = (normal.get(l), normal.get(r)) {
                ranked.push((scores[id], li, ri, l, r));
            }
        }
    }
    // Highest score first; equal scores by the halves' ids, so the order is deterministic.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked.into_iter().map(|(_, _, _, l, r)| (l.to_string(), r.to_string())).collect()
}

/// The tokenizer of a SentencePiece BPE vocabulary.
pub(super) fn spm_tokenizer(
    tokens: &[String],
    scores: &[f32],
    types: &[i32],
    add_space_prefix: bool,
) -> Result<Tokenizer, ExecError> {
    if scores.len() != tokens.len() || types.len() != tokens.len() {
        return Err(tk(format!(
            "tokenizer.ggml: {} tokens but {} scores and {} token types",
            tokens.len(),
            scores.len(),
            types.len()
        )));
    }
    let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges = merges_from_scores(tokens, scores, types);
    let mut bpe = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = tokens.iter().zip(types).find(|(_, &t)| t == UNKNOWN).map(|(s, _)| s) {
        bpe = bpe.unk_token(unk.clone());
    }
    let mut tok = Tokenizer::new(bpe.build().map_err(tk)?);
    let replace = Replace::new(" ", SPACE).map_err(tk)?;
    let normalizer: NormalizerWrapper = if add_space_prefix {
        NormalizerSequence::new(vec![Prepend::new(SPACE.into()).into(), replace.into()]).into()
    } else {
        replace.into()
    };
    tok.with_normalizer(Some(normalizer)).map_err(tk)?;
    let decoder = DecoderSequence::new(vec![
        Replace::new(SPACE, " ").map_err(tk)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ]);
    tok.with_decoder(Some(decoder));
    // Unknown, control and user-defined pieces are matched whole in text (llama.cpp's special
    // partition); the text between them is normalised, so each stretch gets its `▁` prefix.
    tok.add_special_tokens(special_tokens(tokens, types, &[UNKNOWN, CONTROL, USER_DEFINED])).map_err(tk)?;
    Ok(tok)
}

/// The pieces of the given GGUF token types, as special tokens matched whole in text.
pub(super) fn special_tokens(tokens: &[String], types: &[i32], kinds: &[i32]) -> Vec<AddedToken> {
    tokens
        .iter()
        .zip(types)
        .filter(|(_, t)| kinds.contains(t))
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_the_merged_pieces_scores() {
        // Pieces a, b, c (scores irrelevant for singles), "ab" score -1, "bc" score -2, "abc"
        // score -3: merges (a,b) before (b,c), then the two ways to build "abc".
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"].iter().map(|s| s.to_string()).collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0];
        let m = merges_from_scores(&tokens, &scores, &[NORMAL; 6]);
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(m, vec![pair("a", "b"), pair("b", "c"), pair("a", "bc"), pair("ab", "c")]);
        // So "abc" is a+b first (score -1 beats -2), then ab+c.
        let tok = spm_tokenizer(&tokens, &scores, &[NORMAL; 6], false).unwrap();
        assert_eq!(tok.encode("abc", false).unwrap().get_ids(), &[5]);
        assert_eq!(tok.encode("bca", false).unwrap().get_ids(), &[4, 0]);
    }

    #[test]
    fn mismatched_metadata_is_an_error() {
        let tokens = vec!["a".to_string()];
        assert!(spm_tokenizer(&tokens, &[], &[NORMAL], true).is_err());
    }
}
