//! The node plugin end to end: the real `cert-csi node` binary on its unix
//! socket, real tmpfs and bind mounts, the simulated kubelet, and the real
//! API server (or the sandbox), judged by openssl and the mount table.

mod attributes;
mod csi_sanity;
mod grpc_clients;
mod migration;
mod observability;
mod operator;
mod outage;
mod outcomes;
mod publish;
mod readiness_gates;
mod restart;
mod rotation;
mod spiffe;
mod store_mounts;
mod trust_bundle;
