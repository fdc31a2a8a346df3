//! The node side: the lifecycle of every certificate volume on this node,
//! behind the thin gRPC surface in `csi::node` (the split csi-lib makes
//! between its server and its manager).
//!
//! One publish goes down through these modules, never back up:
//! - [`publish`]: validate → lock → acquire a slot → [`request`] (new or
//!   resumed) → wait → [`deliver`] (files, mount) → record → schedule;
//! - [`renew`]: the same request, deliver and record steps when the
//!   scheduler says a volume is due; [`recover`] re-adopts volumes after a
//!   restart, and [`adopt`] takes over those cert-manager's csi-driver left
//!   mounted; [`unpublish`] takes a volume away;
//! - [`driver`]: what differs between csi.cert-manager.io and the SPIFFE
//!   driver; [`trust`]: the CA file every volume gets when a trust bundle is
//!   configured;
//! - [`volumes`]: every disk and mount operation, by name; [`target`]: the
//!   only target paths acted on; [`error`]: each failure's gRPC code,
//!   metric reason and Event.
//!
//! Below them: `volume` (attributes → spec), `pki`, `issuance` (requests),
//! `store` (tmpfs, atomic files, state) and `renewal` (when, and how many
//! at once).

pub mod adopt;
pub mod config;
pub mod deliver;
pub mod driver;
pub mod error;
pub mod keypool;
pub mod publish;
pub mod readiness_gate;
pub mod recover;
pub mod renew;
pub mod request;
pub mod runtime_issuer;
pub mod service;
pub mod target;
pub mod trim;
pub mod trust;
pub mod unpublish;
pub mod volumes;

pub use adopt::Adoption;
pub use config::{DEFAULT_KUBELET_ROOT_DIR, NodeConfig, RetryPolicy};
pub use driver::Driver;
pub use error::{PublishError, UnpublishError};
pub use publish::PublishRequest;
pub use recover::Recovery;
pub use service::VolumeManager;
