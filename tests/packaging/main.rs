//! What ships and what the README promises: the Helm chart through the
//! real Helm engine, the README's tables, `cert-csi demo`, and the
//! benchmark binary.

mod bench_smoke;
mod chart;
mod demo;
mod readme;
