//! Status writes shared by the loops.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// A reconcile that could not finish; the loop retries it with backoff.
#[derive(Debug, Error)]
pub enum ReconcileError {
    #[error("Kubernetes API call failed while {action}: {source}")]
    Api {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("{what} changed {attempts} times while being updated; retrying later")]
    Contended { what: String, attempts: u32 },
}

impl ReconcileError {
    pub fn api(action: &'static str) -> impl FnOnce(kube::Error) -> ReconcileError {
        move |source| ReconcileError::Api { action, source }
    }
}

/// How a guarded write ended.
pub enum Write<K> {
    Done(K),
    /// Someone else wrote first (HTTP 409); the caller re-reads and decides again.
    Conflict,
}

/// Replaces the status of `object` on the condition that it is still at the
/// resourceVersion it was read at. The API server answers 409 when another
/// writer got there first, so two workers can never both write a decision
/// made from the same stale read.
pub async fn replace_status<K>(api: &Api<K>, object: &K) -> Result<Write<K>, ReconcileError>
where
    K: kube::Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    debug_assert!(
        object.meta().resource_version.is_some(),
        "a guarded write needs the resourceVersion it was read at"
    );
    match api
        .replace_status(&name, &PostParams::default(), object)
        .await
    {
        Ok(written) => Ok(Write::Done(written)),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Write::Conflict),
        Err(source) => Err(ReconcileError::Api {
            action: "writing status",
            source,
        }),
    }
}

/// After a conflict: the object as it is now, or `None` when it is gone
/// (then there is nothing left to decide).
pub async fn reread<K>(api: &Api<K>, name: &str) -> Result<Option<K>, ReconcileError>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug,
{
    api.get_opt(name)
        .await
        .map_err(ReconcileError::api("re-reading after a conflicting write"))
}

pub fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// How often a loop re-reads and retries after conflicts within one reconcile.
pub const CONFLICT_ATTEMPTS: u32 = 5;

/// What a loop decided for the object as it read it.
pub enum Decided<K, W, N> {
    /// Write `object`, which carries the decision in its status; `then` is
    /// handed back once the write succeeded.
    Write { object: K, then: W },
    /// Nothing to write.
    Nothing(N),
}

/// How [`decide_and_write`] ended.
pub enum WriteOutcome<K, W, N> {
    /// The decision was written; `object` is what was written.
    Written { object: K, then: W },
    /// `decide` found nothing to write.
    Nothing(N),
    /// The object was deleted between a conflict and the re-read.
    Gone,
}

/// Decides on `object` and writes the decision, guarded by its
/// resourceVersion. After a conflict (another writer got there first) the
/// object is read again and decided afresh, so a decision is never made
/// from a stale read nor written twice; after [`CONFLICT_ATTEMPTS`] the
/// reconcile fails as contended and the loop retries it later. Every loop
/// that writes a status decision goes through here.
pub async fn decide_and_write<K, W, N, D, F>(
    api: &Api<K>,
    object: K,
    mut decide: D,
) -> Result<WriteOutcome<K, W, N>, ReconcileError>
where
    K: kube::Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
    D: FnMut(K) -> F,
    F: std::future::Future<Output = Result<Decided<K, W, N>, ReconcileError>>,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let namespace = object.meta().namespace.clone();
    let mut current = object;
    for _ in 0..CONFLICT_ATTEMPTS {
        let (updated, then) = match decide(current).await? {
            Decided::Write { object, then } => (object, then),
            Decided::Nothing(then) => return Ok(WriteOutcome::Nothing(then)),
        };
        match replace_status(api, &updated).await? {
            Write::Done(_) => {
                return Ok(WriteOutcome::Written {
                    object: updated,
                    then,
                });
            }
            Write::Conflict => match reread(api, &name).await? {
                Some(fresh) => current = fresh,
                None => return Ok(WriteOutcome::Gone),
            },
        }
    }
    let what = match namespace {
        Some(namespace) => format!("{} {namespace}/{name}", K::kind(&())),
        None => format!("{} {name}", K::kind(&())),
    };
    Err(ReconcileError::Contended {
        what,
        attempts: CONFLICT_ATTEMPTS,
    })
}
