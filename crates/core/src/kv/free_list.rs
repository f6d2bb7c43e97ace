//! An intrusive doubly-linked list of block indices, in eviction order.
//!
//! vLLM's `FreeKVCacheBlockQueue`: free blocks are appended at the tail when released and taken
//! from the head when allocated, so a freed block that still holds a cached prefix survives as
//! long as possible (LRU). A prefix-cache hit on a free block removes it from the middle in O(1),
//! which is why this is a linked list over two index arrays and not a `VecDeque`.

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub(crate) struct FreeList {
    prev: Vec<u32>,
    next: Vec<u32>,
    in_list: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

impl FreeList {
    /// A list holding `0..n` in order.
    pub(crate) fn full(n: usize) -> Self {
        let mut list =
            Self { prev: vec![NIL; n], next: vec![NIL; n], in_list: vec![false; n], head: NIL, tail: NIL, len: 0 };
        for i in 0..n as u32 {
            list.push_back(i);
        }
        list
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains(&self, i: u32) -> bool {
        self.in_list.get(i as usize).copied().unwrap_or(false)
    }

    /// Appends `i` at the tail (most recently freed). No-op if already listed.
    pub(crate) fn push_back(&mut self, i: u32) {
        if self.contains(i) {
            return;
        }
        let k = i as usize;
        self.prev[k] = self.tail;
        self.next[k] = NIL;
        if self.tail == NIL {
            self.head = i;
        } else {
            self.next[self.tail as usize] = i;
        }
        self.tail = i;
        self.in_list[k] = true;
        self.len += 1;
    }

    /// Takes the head (least recently freed).
    pub(crate) fn pop_front(&mut self) -> Option<u32> {
        if self.head == NIL {
            return None;
        }
        let i = self.head;
        self.remove(i);
        Some(i)
    }

    /// Unlinks `i` wherever it is. No-op if not listed.
    pub(crate) fn remove(&mut self, i: u32) {
        if !self.contains(i) {
            return;
        }
        let k = i as usize;
        let (p, n) = (self.prev[k], self.next[k]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[k] = NIL;
        self.next[k] = NIL;
        self.in_list[k] = false;
        self.len -= 1;
    }

    /// Walks head → tail (for invariant checks and tests).
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let mut cur = self.head;
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let i = cur;
            cur = self.next[i as usize];
            Some(i)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_order_and_removes_from_the_middle() {
        let mut l = FreeList::full(4); // 0 1 2 3
        l.remove(2); // 0 1 3
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![0, 1, 3]);
        assert_eq!(l.pop_front(), Some(0)); // 1 3
        l.push_back(0); // 1 3 0
        l.push_back(0); // already listed: still 1 3 0
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![1, 3, 0]);
        assert_eq!(l.len(), 3);
        l.remove(0); // tail removed: 1 3
        l.remove(1); // head removed: 3
        assert_eq!(l.pop_front(), Some(3));
        assert_eq!(l.pop_front(), None);
        assert_eq!(l.len(), 0);
    }
}
