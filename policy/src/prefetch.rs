//! Asking the CPU for memory before it is read. A gateway's packets stream through memory
//! far larger than the caches (the realistic benchmarks cycle a pool of a million 48-byte
//! packets, 48 MiB): a batch lookup that reads each packet only when it gets to it waits on
//! every cache line.
//! Natively, fetching the next lanes' packets while the current ones are looked up takes
//! 7-16 % off a lookup (`BENCHMARKS.md`, design decisions). Wasm has no prefetch instruction,
//! and a guest reads its batch from the columns the host has just written. The host's
//! encoder, which reads the packets for it, gained nothing from prefetching: it has no
//! lookup work to hide the fetches under.

/// Asks for every cache line of `items` to be brought into the caches, without waiting for
/// them. A hint: it changes no value and never faults.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch<T>(items: &[T]) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    /// Bytes of a cache line.
    const LINE: usize = 64;
    let start = items.as_ptr().cast::<i8>();
    for at in (0..size_of_val(items)).step_by(LINE) {
        // SAFETY: `_mm_prefetch` is unsafe only because it needs SSE, which is in the
        // x86_64 baseline (every x86_64 CPU has it); a prefetch reads no value and cannot
        // fault, and the address is inside `items` anyway.
        #[allow(unsafe_code)]
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(at));
        }
    }
}

/// Elsewhere, nothing.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(crate) fn prefetch<T>(_items: &[T]) {}
