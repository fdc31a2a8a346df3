//! The gRPC surface the kubelet talks to: CSI Identity and Node over a unix
//! socket. Handlers translate between protobuf and the domain modules and map
//! each domain error to a gRPC code; they hold no business logic of their own.

pub mod authority;
pub mod client;
pub mod identity;
pub mod kubelet;
pub mod node;

pub mod run;
pub mod server;

/// Generated from `proto/csi.proto` by build.rs.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("csi.v1");
}
