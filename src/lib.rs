//! cert-csi: per-pod X.509 identities delivered through a CSI driver and
//! signed through cert-manager.io/v1 CertificateRequests.
//!
//! Module map (one arrow of the data path each; see README "Architecture"):
//! - [`api`]: the cert-manager.io/v1 types and their CRDs.
//! - `demo`: `cert-csi demo`, on the in-memory API server of the
//!   `kube-sandbox` crate (cargo feature `sandbox`, on by default).
//! - [`volume`]: volume attributes → a validated `VolumeSpec`, without side effects.
//! - [`pki`]: keys, CSRs, certificate inspection and keystores.
//! - [`telemetry`]: logging setup.
//! - [`shutdown`]: the one shutdown signal every mode shares.

pub mod api;
pub mod cli;
pub mod controller;
pub mod csi;
#[cfg(feature = "sandbox")]
pub mod demo;
pub mod issuance;
pub mod pki;
pub mod renewal;
pub mod shutdown;
pub mod spiffe;
pub mod store;
pub mod telemetry;
pub mod volume;
