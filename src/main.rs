/// mimalloc rather than the system allocator: replay and the executor
/// allocate many small JSON values, and glibc's malloc spent ~45 % of a
/// replay's time (docs/benchmarks.md).
///
/// The `system-allocator` feature leaves glibc's in place, so that a heap
/// profiler which intercepts malloc (heaptrack) sees every allocation.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    autobiz::main()
}
