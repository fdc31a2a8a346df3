//! The controller end to end: approvers, issuer status, the signer and
//! Certificates on the real API server, the CRDs and manifests against the
//! server's own answers, RBAC under real ServiceAccount tokens, and
//! cert-manager's objects read and written unchanged, and the Secrets of
//! Certificates compared with those real cert-manager writes (interop).

mod api_roundtrip;
mod certificates;
mod crds_drift;
mod interop;
mod leader;
mod operator;
mod policy;
mod rbac;
mod signer;
mod spiffe;
mod webhook_rotation;
