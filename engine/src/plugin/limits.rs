//! [`SandboxLimits`], the limits every instance runs under, and [`InstanceLimiter`], the
//! resource limiter that holds one instance to them.
//!
//! One memory budget covers everything an instance allocates through wasmtime: the sum of all its
//! linear memories plus its tables (a pointer per element). A cap per memory would let a
//! component with several memories use that cap several times over. The limiter also records
//! that it refused a growth, which is how a memory-limit fault is recognised (see
//! `fault::classify`).

use std::time::Duration;

use wasmtime::ResourceLimiter;

/// Limits applied to every instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Bytes all of an instance's linear memories and tables may hold together.
    pub memory_bytes: usize,
    /// CPU time one call may use (see `deadline.rs`).
    pub call_timeout: Duration,
    /// Extra CPU time per connection a batch carries.
    pub per_call_budget: Duration,
    /// Core instances, tables and memories one plugin instance may create (each, at most).
    pub max_instances: usize,
    /// Elements one table may grow to.
    pub max_table_elements: usize,
}

/// What a table element costs wasmtime: a pointer (see `ResourceLimiter::table_growing`).
const TABLE_ELEMENT_BYTES: usize = size_of::<usize>();

/// Holds one instance's store to its [`SandboxLimits`].
#[derive(Debug)]
pub(super) struct InstanceLimiter {
    /// The limits.
    limits: SandboxLimits,
    /// Bytes granted so far to all memories and tables of the store.
    used: usize,
    /// The last growth granted, taken back if wasmtime then fails to grow.
    last_granted: usize,
    /// Whether a growth was refused since [`Self::take_denied`] was last called.
    denied: bool,
}

impl InstanceLimiter {
    /// A limiter with nothing granted yet.
    pub(super) fn new(limits: SandboxLimits) -> Self {
        InstanceLimiter { limits, used: 0, last_granted: 0, denied: false }
    }

    /// Whether a growth was refused since the last time this was asked; resets the answer.
    pub(super) fn take_denied(&mut self) -> bool {
        std::mem::take(&mut self.denied)
    }

    /// Grants growing by `more` bytes if the total stays within the budget.
    fn grow(&mut self, more: usize) -> bool {
        match self.used.checked_add(more).filter(|total| *total <= self.limits.memory_bytes) {
            Some(total) => {
                (self.used, self.last_granted) = (total, more);
                true
            }
            None => {
                self.denied = true;
                false
            }
        }
    }

    /// Takes back the last grant: wasmtime could not grow after all.
    fn undo_last_grant(&mut self) {
        self.used -= std::mem::take(&mut self.last_granted);
    }
}

impl ResourceLimiter for InstanceLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.grow(desired.saturating_sub(current)))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.undo_last_grant();
        Ok(())
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limits.max_table_elements {
            self.denied = true;
            return Ok(false);
        }
        Ok(self.grow(desired.saturating_sub(current).saturating_mul(TABLE_ELEMENT_BYTES)))
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.undo_last_grant();
        Ok(())
    }

    fn instances(&self) -> usize {
        self.limits.max_instances
    }

    fn tables(&self) -> usize {
        self.limits.max_instances
    }

    fn memories(&self) -> usize {
        self.limits.max_instances
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 64 << 10;

    fn limiter(memory_bytes: usize) -> InstanceLimiter {
        InstanceLimiter::new(SandboxLimits {
            memory_bytes,
            call_timeout: Duration::from_millis(1),
            per_call_budget: Duration::ZERO,
            max_instances: 4,
            max_table_elements: 1000,
        })
    }

    #[test]
    fn two_memories_share_one_budget() {
        let mut limiter = limiter(4 * PAGE);
        assert!(limiter.memory_growing(0, 2 * PAGE, None).unwrap(), "first memory");
        assert!(limiter.memory_growing(0, 2 * PAGE, None).unwrap(), "second memory, budget now used up");
        assert!(!limiter.take_denied());
        assert!(!limiter.memory_growing(2 * PAGE, 3 * PAGE, None).unwrap(), "either memory growing is over");
        assert!(limiter.take_denied(), "the refusal is recorded");
        assert!(!limiter.take_denied(), "and reported once");
    }

    #[test]
    fn tables_count_against_the_same_budget_and_their_own_cap() {
        let mut limiter = limiter(PAGE + 100 * TABLE_ELEMENT_BYTES);
        assert!(limiter.memory_growing(0, PAGE, None).unwrap());
        assert!(limiter.table_growing(0, 100, None).unwrap());
        assert!(!limiter.table_growing(100, 101, None).unwrap(), "one element over the shared budget");
        assert!(limiter.take_denied());
        let mut roomy = self::limiter(usize::MAX);
        assert!(!roomy.table_growing(0, 1001, None).unwrap(), "over max_table_elements");
    }

    #[test]
    fn a_growth_wasmtime_could_not_make_is_given_back() {
        let mut limiter = limiter(2 * PAGE);
        assert!(limiter.memory_growing(0, 2 * PAGE, None).unwrap());
        limiter.memory_grow_failed(wasmtime::Error::msg("over the memory's own maximum")).unwrap();
        assert!(limiter.memory_growing(0, 2 * PAGE, None).unwrap(), "the failed growth left the budget whole");
    }
}
