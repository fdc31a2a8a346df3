//! What ships and what the README promises: the Helm chart through the
//! real Helm engine, the README's tables, `cert-csi demo` and
//! `cert-csi sandbox`, and the benchmark binary.

mod bench_smoke;
mod chart;
mod chart_csi_driver;
mod demo;
mod readme;
mod sandbox_cli;
