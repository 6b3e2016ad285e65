//! [`PluginFault`]: why a plugin call produced no usable result, told apart by cause so each has
//! its own metric and log line. None of them is a business error (that is
//! [`Outcome::Error`](super::Outcome::Error)), and none of them touches another connection.

/// Why a plugin call produced no usable result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginFault {
    /// The call ran past its deadline and was interrupted.
    #[error("timed out")]
    Timeout,
    /// The instance asked for more memory or table space than its cap (the limiter said no).
    #[error("exceeded its memory limit")]
    MemoryLimit,
    /// The instance asked the host to copy or keep more for it than its memory cap allows (a
    /// data read too large, too many key names): counted with [`Self::MemoryLimit`].
    #[error("made the host exceed its memory limit: {0}")]
    HostMemory(String),
    /// The guest trapped: a panic, an `unreachable`, an out-of-bounds access, or a host call the
    /// sandbox refuses (waiting on WASI).
    #[error("trapped: {0}")]
    Trap(String),
    /// The guest broke the contract: the wrong number of outcomes, a text outside its buffer or
    /// not UTF-8.
    #[error("broke the contract: {0}")]
    Contract(String),
    /// The call failed outside WebAssembly code with no trap: in a host function or in the
    /// component ABI's lifting and lowering. A guest's bad pointer can cause it, but so can an
    /// engine bug, so it is counted apart and logged as an error.
    #[error("failed in the host: {0}")]
    Host(String),
}

/// A host function's refusal of something the sandbox does not allow; the guest's fault, so it
/// is classified as a trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("plugins may not block or sleep (wasi:io/poll is refused)")]
pub(super) struct BlockingRefused;

/// A data read refused because it would make the host copy or keep more than the plugin's
/// memory cap allows; it traps the call (the instance is dropped, so neither it nor its key table
/// outlives the refusal), and is classified as [`PluginFault::HostMemory`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(super) struct HostMemoryRefused(pub(super) String);

/// Sorts the error of a failed call into a fault kind. `memory_denied` says whether the store's
/// limiter refused a growth during the call: the memory cap is known from the limiter itself,
/// never from wasmtime's error text.
pub(super) fn classify(err: &wasmtime::Error, memory_denied: bool) -> PluginFault {
    if memory_denied {
        return PluginFault::MemoryLimit;
    }
    if let Some(refused) = err.downcast_ref::<HostMemoryRefused>() {
        return PluginFault::HostMemory(refused.0.clone());
    }
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => PluginFault::Timeout,
        Some(_) => PluginFault::Trap(format!("{err:#}")),
        None if err.downcast_ref::<BlockingRefused>().is_some() => PluginFault::Trap(format!("{err:#}")),
        None => PluginFault::Host(format!("{err:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_sorted_by_cause_not_by_message() {
        let interrupted = wasmtime::Error::new(wasmtime::Trap::Interrupt);
        assert_eq!(classify(&interrupted, false), PluginFault::Timeout);
        assert_eq!(classify(&interrupted, true), PluginFault::MemoryLimit, "the limiter's word comes first");
        let unreachable = wasmtime::Error::new(wasmtime::Trap::UnreachableCodeReached);
        assert!(matches!(classify(&unreachable, false), PluginFault::Trap(_)));
        assert!(matches!(classify(&wasmtime::Error::new(BlockingRefused), false), PluginFault::Trap(_)));
        let refused = wasmtime::Error::new(HostMemoryRefused("too much".into()));
        assert_eq!(classify(&refused, false), PluginFault::HostMemory("too much".into()));
        // Text that looks like a memory fault is not one unless the limiter refused.
        let lookalike = wasmtime::Error::msg("forcing trap when growing memory");
        assert!(matches!(classify(&lookalike, false), PluginFault::Host(_)));
    }
}
