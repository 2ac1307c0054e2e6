//! flowgate's benchmarks live in this package's `[[bench]]` targets; run them with
//! `cargo bench -p flowgate-benches`. See `BENCHMARKS.md` at the top of the repository.
