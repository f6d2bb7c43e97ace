//! The host (CPU memory) tier of KV blocks that preempted sequences are swapped to.
//!
//! vLLM v0's CPU block allocator, minus prefix caching: a free stack and an in-use bitmap (the
//! bitmap is what lets a double free be refused rather than corrupt the pool).

use crate::types::HostBlockId;

#[derive(Debug, Clone)]
pub struct HostPool {
    free: Vec<HostBlockId>,
    in_use: Vec<bool>,
}

impl HostPool {
    pub fn new(num_blocks: usize) -> Self {
        let free = (0..num_blocks as u32).rev().map(HostBlockId).collect();
        Self { free, in_use: vec![false; num_blocks] }
    }

    pub fn num_blocks(&self) -> usize {
        self.in_use.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Takes `n` blocks into `out`, or takes none and returns false.
    pub fn allocate(&mut self, n: usize, out: &mut Vec<HostBlockId>) -> bool {
        if n > self.free.len() {
            return false;
        }
        for _ in 0..n {
            if let Some(b) = self.free.pop() {
                self.in_use[b.index()] = true;
                out.push(b);
            }
        }
        true
    }

    /// Returns a block; false (and no change) if it was not in use.
    pub fn free(&mut self, b: HostBlockId) -> bool {
        match self.in_use.get_mut(b.index()) {
            Some(used) if *used => {
                *used = false;
                self.free.push(b);
                true
            }
            _ => false,
        }
    }

    pub fn is_in_use(&self, b: HostBlockId) -> bool {
        self.in_use.get(b.index()).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_all_or_nothing_and_double_free_is_refused() {
        let mut pool = HostPool::new(3);
        let mut got = Vec::new();
        assert!(!pool.allocate(4, &mut got), "4 > 3 free");
        assert!(got.is_empty());
        assert!(pool.allocate(2, &mut got)); // 3 - 2 = 1 free
        assert_eq!(pool.num_free(), 1);
        assert!(pool.free(got[0])); // 1 + 1 = 2 free
        assert!(!pool.free(got[0]), "double free refused");
        assert_eq!(pool.num_free(), 2);
    }
}
