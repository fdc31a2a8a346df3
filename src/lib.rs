//! cert-csi: per-pod X.509 identities delivered through a CSI driver and
//! signed through cert-manager.io/v1 CertificateRequests.
//!
//! Module map, in the order of a certificate's path from the kubelet's
//! call to the pod's files and back through renewal; one line each:
//! - [`cli`]: the flags of every mode (`main.rs` only calls it).
//! - [`csi`]: the gRPC surface on the kubelet's unix socket (Identity,
//!   Node); protobuf in, domain errors out as gRPC codes.
//! - [`node`]: each volume's lifecycle: publish, unpublish, renewal,
//!   recovery after a restart, and the trust bundle.
//! - [`volume`]: volume attributes (of either driver) → a validated
//!   `VolumeSpec`, without side effects.
//! - [`pki`]: keys, CSRs, certificate checks, signing and keystores.
//! - [`issuance`]: one CertificateRequest's life: build, create, one shared
//!   watch for every waiter, and clean-up.
//! - [`store`]: per-volume tmpfs, atomic file swaps, read-only bind mounts,
//!   and node state without key material.
//! - [`renewal`]: when to renew (pure), one timer for all volumes, and the
//!   node-wide issuance limiter.
//! - [`controller`]: the cluster side: approvers, issuer status, the
//!   signer, Certificates and the webhook.
//! - [`api`]: the cert-manager.io/v1 types, Go durations, and the CRDs.
//! - [`spiffe_id`]: the SPIFFE ID rules the node and the approver share.
//! - [`kubernetes`]: client configuration, watch backoff, Secret fields.
//! - [`telemetry`]: logs, metrics, health endpoints and Events.
//! - [`shutdown`]: the one shutdown signal every mode shares.
//! - `demo`: `cert-csi demo`, the whole system on one machine, on the
//!   in-memory API server of the `kube-sandbox` crate (cargo feature
//!   `sandbox`, on by default; the image is built without it).

pub mod api;
pub mod api_rate;
pub mod cli;
pub mod controller;
pub mod csi;
#[cfg(feature = "sandbox")]
pub mod demo;
pub mod issuance;
pub mod kubernetes;
pub mod node;
pub mod operator;
pub mod pki;
pub mod ratelimit;
pub mod renewal;
pub mod shutdown;
pub mod spiffe_id;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod volume;
