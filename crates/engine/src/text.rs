//! A request's tokens as client text: the incremental detokenizer, then stop strings (vLLM and
//! TGI match stop strings in their engine layer too: the scheduler only knows token ids).
//! [`crate::Generation`] streams through a [`TokenText`].
//!
//! [`StopMatcher`] holds back the tail of the text that could still become a stop string, so a
//! client never sees the beginning of a stop sequence that then matches; on a match the text is
//! cut before it and the request is finished with `Stopped(StopString)`.

use tandem_executor::text::{IncrementalDecoder, TextTokenizer};
use tandem_executor::ExecError;

/// Finds stop strings in streamed text.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), ..Self::default() }
    }

    /// Adds `delta`; returns the text safe to emit and whether a stop string matched (then the
    /// returned text ends just before it).
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        self.text.push_str(delta);
        let window = self.emitted.saturating_sub(self.stops.iter().map(|s| s.len()).max().unwrap_or(0));
        let window = (0..=window).rev().find(|&i| self.text.is_char_boundary(i)).unwrap_or(0);
        let hit = self.stops.iter().filter_map(|s| self.text[window..].find(s.as_str()).map(|i| window + i)).min();
        if let Some(at) = hit {
            let out = self.text.get(self.emitted..at).unwrap_or_default().to_string();
            self.emitted = self.text.len();
            return (out, true);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (k, _) in s.char_indices().skip(1) {
                if self.text.ends_with(&s[..k]) {
                    hold = hold.max(k);
                }
            }
        }
        let upto = (self.text.len() - hold).max(self.emitted);
        let out = self.text[self.emitted..upto].to_string();
        self.emitted = upto;
        (out, false)
    }

    /// The held-back text, at the end of a stream that did not stop on a string.
    pub fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}

/// A request's tokens as client text: the incremental detokenizer, then the stop strings.
#[derive(Debug, Clone, Default)]
pub struct TokenText {
    decoder: IncrementalDecoder,
    stops: StopMatcher,
}

impl TokenText {
    pub fn new(stops: Vec<String>) -> Self {
        Self { decoder: IncrementalDecoder::new(), stops: StopMatcher::new(stops) }
    }

    /// Adds token `t`: the text safe to show now, and whether a stop string matched (the text
    /// then ends just before it, and the request should be finished).
    pub fn push(&mut self, tokenizer: &TextTokenizer, t: u32) -> Result<(String, bool), ExecError> {
        let piece = self.decoder.push(tokenizer, t)?;
        Ok(self.stops.push(&piece))
    }

    /// Everything still held back, at the end of a request that did not stop on a string.
    pub fn finish(&mut self, tokenizer: &TextTokenizer) -> String {
        let tail = self.decoder.flush(tokenizer).unwrap_or_default();
        let (mut text, _) = self.stops.push(&tail);
        text.push_str(&self.stops.flush());
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(m: &mut StopMatcher, parts: &[&str]) -> (String, bool) {
        let mut out = String::new();
        for p in parts {
            let (t, stop) = m.push(p);
            out.push_str(&t);
            if stop {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn a_stop_string_split_across_deltas_is_cut_and_never_shown() {
        let mut m = StopMatcher::new(vec!["\n\nUser:".into()]);
        // After "Hi\n" the matcher must hold "\n" back: it may start the stop string.
        assert_eq!(m.push("Hi\n"), ("Hi".to_string(), false));
        assert_eq!(feed(&mut m, &["\nUs", "er: more"]), (String::new(), true));
    }

    #[test]
    fn held_back_text_is_released_when_it_does_not_match() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(feed(&mut m, &["the E", "ND", "!"]), ("the ".to_string(), true));
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(feed(&mut m, &["the E", "x", "it"]), ("the Exit".to_string(), false));
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_unicode_is_safe() {
        let mut m = StopMatcher::new(vec!["zz".into(), "ß".into(), String::new()]);
        assert_eq!(feed(&mut m, &["aé", "ßzz"]), ("aé".to_string(), true));
    }
}
