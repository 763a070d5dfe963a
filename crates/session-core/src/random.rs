//! Randomness for tokens: bytes from the OS CSPRNG, fetched a block at a time.
//!
//! A `getrandom` call costs a system call and a per-call key schedule in the kernel: about a
//! quarter of an in-memory `create` or `rotate` when made once per token (perf, `session-bench
//! memory`). Each thread therefore asks the OS for [`BLOCK`] bytes at once and hands them out
//! [`TOKEN_RANDOM_BYTES`] at a time. The bytes are still the OS CSPRNG's, used once: each chunk is
//! zeroed as it is handed out, and a forked child (whose copy of the block its parent also holds)
//! refills before its first token, detected by a change of process id.

use std::cell::RefCell;

use crate::token::TOKEN_RANDOM_BYTES;

/// Bytes fetched per system call: 32 tokens.
const BLOCK: usize = 32 * TOKEN_RANDOM_BYTES;

struct Block {
    bytes: [u8; BLOCK],
    /// Bytes handed out (and zeroed) so far; `BLOCK` when empty.
    used: usize,
    /// The process the bytes were fetched in.
    pid: u32,
}

thread_local! {
    static BLOCK_OF_THREAD: RefCell<Block> = const {
        RefCell::new(Block { bytes: [0; BLOCK], used: BLOCK, pid: 0 })
    };
}

/// Fills `out` with bytes from the OS CSPRNG that no other caller has received.
pub(crate) fn fill(out: &mut [u8; TOKEN_RANDOM_BYTES]) -> Result<(), getrandom::Error> {
    BLOCK_OF_THREAD.with_borrow_mut(|block| {
        let pid = std::process::id();
        if block.used == BLOCK || block.pid != pid {
            getrandom::fill(&mut block.bytes)?;
            block.used = 0;
            block.pid = pid;
        }
        let chunk = &mut block.bytes[block.used..block.used + TOKEN_RANDOM_BYTES];
        out.copy_from_slice(chunk);
        chunk.fill(0);
        block.used += TOKEN_RANDOM_BYTES;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn chunks_are_distinct_across_blocks_and_zeroed_once_handed_out() {
        let mut seen = HashSet::new();
        for _ in 0..(3 * BLOCK / TOKEN_RANDOM_BYTES + 1) {
            let mut out = [0u8; TOKEN_RANDOM_BYTES];
            fill(&mut out).unwrap();
            assert_ne!(out, [0u8; TOKEN_RANDOM_BYTES]);
            assert!(seen.insert(out), "a chunk was handed out twice");
        }
        BLOCK_OF_THREAD.with_borrow(|block| {
            assert!(block.bytes[..block.used].iter().all(|&b| b == 0));
        });
    }
}
