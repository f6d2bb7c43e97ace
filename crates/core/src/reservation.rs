//! Places held for refused clients: a request refused because it would miss its deadline keeps
//! its place in line until the time its Retry-After names, so that its retry is not refused
//! again by the requests that arrived after it.
//!
//! Without this, a Retry-After at twice a server's capacity says when capacity opens, not that
//! this client gets it: the fresh arrivals of the wait take it first. HTTP and the OpenAI
//! clients give no ticket to carry, so a place is keyed on what the retry repeats — the
//! caller's hash of its tenant, prompt and length ([`Reservations::hold`]); nothing else is
//! trusted. A held place counts as prompt tokens queued ahead of every request that arrives
//! after it (the caller adds [`Reservations::ahead`] to its backlog), so later arrivals are
//! refused, with later Retry-Afters, until the holder's turn; the holder's own retry counts
//! only the places held before its own. A place counts ahead only until its due time (the
//! wait its holder was told): a holder not back by then no longer keeps the server idle for
//! others — refused again, it keeps its place with a new due time. A place not claimed by its
//! due time plus a grace lapses: a client that gave up stops holding capacity. None of vLLM, SGLang or TGI has this
//! (nor admission by predicted wait at all); it is the queueing idea of a virtual waiting room.
//!
//! Plain data and time passed in, like the rest of the core.

use std::collections::VecDeque;
use std::time::Duration;

/// A client is given this long past its due time to come back, at least.
pub const MIN_GRACE: Duration = Duration::from_secs(1);

/// What [`Reservations::hold`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// A place is held from now.
    New,
    /// The request held one already: it keeps it, with the new due time.
    Kept,
    /// No place: as many as the capacity are held.
    Full,
}

/// One held place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    key: u64,
    tokens: usize,
    /// Until when it counts ahead of later arrivals.
    due: Duration,
    /// When the place lapses unless claimed.
    lapses: Duration,
}

/// Places in the order they were first held.
#[derive(Debug, Clone, Default)]
pub struct Reservations {
    places: VecDeque<Place>,
    /// Most places held at once (0: none held).
    capacity: usize,
}

impl Reservations {
    /// Holds at most `capacity` places at once (0 turns reservations off).
    pub fn new(capacity: usize) -> Self {
        Self { places: VecDeque::new(), capacity }
    }

    /// Drops the places that lapsed by `now`.
    fn expire(&mut self, now: Duration) {
        self.places.retain(|p| p.lapses > now);
    }

    /// Prompt tokens held ahead of a request with `key` at `now`: those of every place held
    /// before its own (or of all of them if it holds none, or is `None`) and not past its due
    /// time.
    pub fn ahead(&mut self, now: Duration, key: Option<u64>) -> usize {
        self.expire(now);
        self.places.iter().take_while(|p| Some(p.key) != key).filter(|p| p.due > now).map(|p| p.tokens).sum()
    }

    /// Places held at `now`.
    pub fn held(&mut self, now: Duration) -> usize {
        self.expire(now);
        self.places.len()
    }

    /// A request with `key` and `tokens` prompt tokens was refused at `now` and told to come
    /// back in `wait`: its place (kept where it was if it held one already) is due in `wait`
    /// and lapses a grace of a quarter of it (at least [`MIN_GRACE`]) later.
    pub fn hold(&mut self, now: Duration, key: u64, tokens: usize, wait: Duration) -> Hold {
        self.expire(now);
        let due = now + wait;
        let lapses = due + (wait / 4).max(MIN_GRACE);
        if let Some(p) = self.places.iter_mut().find(|p| p.key == key) {
            *p = Place { key, tokens, due, lapses };
            return Hold::Kept;
        }
        if self.places.len() >= self.capacity {
            return Hold::Full;
        }
        self.places.push_back(Place { key, tokens, due, lapses });
        Hold::New
    }

    /// The request with `key` was admitted: its place, if it held one, is given up.
    pub fn claim(&mut self, key: u64) -> bool {
        let before = self.places.len();
        self.places.retain(|p| p.key != key);
        self.places.len() < before
    }

    /// Whether no place is held.
    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn a_held_place_counts_ahead_of_later_arrivals_only() {
        let mut r = Reservations::new(8);
        assert_eq!(r.hold(s(0.0), 1, 300, s(2.0)), Hold::New);
        assert_eq!(r.hold(s(0.5), 2, 200, s(3.0)), Hold::New);
        // A fresh arrival (key 9) has both ahead: 300 + 200.
        assert_eq!(r.ahead(s(1.0), None), 500);
        // The first holder has none ahead; the second has the first's 300.
        assert_eq!(r.ahead(s(1.0), Some(1)), 0);
        assert_eq!(r.ahead(s(1.0), Some(2)), 300);
        // Refused again, the first keeps its place (still first), with its new size.
        assert_eq!(r.hold(s(1.5), 1, 310, s(0.5)), Hold::Kept);
        assert_eq!(r.ahead(s(1.5), Some(2)), 310);
        assert!(r.claim(1));
        assert!(!r.claim(1), "a place is claimed once");
        assert_eq!(r.ahead(s(1.6), None), 200);
    }

    #[test]
    fn a_place_lapses_after_its_due_time_and_grace() {
        let mut r = Reservations::new(8);
        // Due at 2 s; grace max(1 s, 2 s / 4) = 1 s: held until 3 s, counted ahead until 2 s.
        r.hold(s(0.0), 1, 300, s(2.0));
        assert_eq!(r.ahead(s(1.99), None), 300);
        assert_eq!(r.ahead(s(2.5), None), 0, "past its due time it no longer counts ahead");
        assert_eq!(r.held(s(2.99)), 1, "but is still held");
        assert_eq!(r.held(s(3.0)), 0);
        assert!(r.is_empty());
        // A long wait gets a quarter of it: due at 8 s, held until 10 s.
        r.hold(s(0.0), 2, 100, s(8.0));
        assert_eq!(r.held(s(9.9)), 1);
        assert_eq!(r.held(s(10.0)), 0);
        // A late holder refused again keeps its place, due again: it counts ahead once more.
        r.hold(s(0.0), 3, 50, s(1.0));
        r.hold(s(0.1), 4, 70, s(5.0));
        assert_eq!(r.ahead(s(1.5), Some(4)), 0, "3 is late: 4 is not held back by it");
        assert_eq!(r.hold(s(1.5), 3, 50, s(1.0)), Hold::Kept);
        assert_eq!(r.ahead(s(1.6), Some(4)), 50, "3 is first again");
    }

    #[test]
    fn at_capacity_no_new_place_is_held() {
        let mut r = Reservations::new(1);
        assert_eq!(r.hold(s(0.0), 1, 10, s(1.0)), Hold::New);
        assert_eq!(r.hold(s(0.0), 2, 10, s(1.0)), Hold::Full);
        assert_eq!(r.hold(s(0.1), 1, 10, s(1.0)), Hold::Kept, "the holder itself is refreshed");
        assert_eq!(Reservations::new(0).hold(s(0.0), 1, 10, s(1.0)), Hold::Full, "capacity 0: off");
    }
}
