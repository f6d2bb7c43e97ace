//! Text in and out: the tokenizer (from `tokenizer.json` or built from GGUF metadata), streaming
//! detokenization that never splits a UTF-8 character, and the model's own chat template.

mod chat;
mod detok;
mod spm;
mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use detok::IncrementalDecoder;
pub use tokenizer::TextTokenizer;
