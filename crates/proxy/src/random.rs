//! Cheap randomness for sampling and load balancing: no lock, no syscall,
//! not for anything secret.

use std::{cell::Cell, collections::hash_map::RandomState, hash::BuildHasher};

/// A uniform draw from [0, 1).
pub(crate) fn unit_random() -> f64 {
    // The top 53 bits, scaled: exactly representable, strictly below 1.
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// 64 random bits, never zero: xorshift64* per thread, seeded randomly, so
/// a draw takes no lock and shares no cache line between threads (trace
/// and span ids need uniqueness, not secrecy).
pub(crate) fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()) | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        // A non-zero state times an odd constant is never zero.
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// A uniform index below `n` (`n` > 0).
pub(crate) fn below(n: usize) -> usize {
    // Truncation is the point: the floor of a draw strictly below n.
    let i = (unit_random() * n as f64) as usize;
    i.min(n.saturating_sub(1))
}
