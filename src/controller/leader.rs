//! Leader election on a `coordination.k8s.io/v1` Lease, so that several
//! controller replicas can run and only one of them approves and signs.
//!
//! The rules are client-go's `leaderelection` package, which cert-manager's
//! controller uses, so the Lease reads the same in `kubectl` and the same
//! flags mean the same thing:
//! - a candidate takes the Lease when nobody holds it, or when the record it
//!   last saw has not changed for the Lease's `leaseDurationSeconds`,
//!   measured on the candidate's own monotonic clock from the moment it saw
//!   the change (so clocks of different machines never matter);
//! - every write is a replace guarded by `resourceVersion`, so two
//!   candidates cannot both win;
//! - the leader renews every retry period and gives up when it has not
//!   renewed for the renew deadline, which is shorter than the lease
//!   duration. The deadline counts from the moment the last successful
//!   renewal was *sent*, and a candidate's wait counts from the moment it
//!   *saw* that renewal, which is later, so the old leader always stops
//!   before another replica may start;
//! - on a clean shutdown the leader releases the Lease (empty holder), so a
//!   rolling update hands over at once instead of after a lease duration.
//!
//! A leader that loses the Lease stops its loops and the process exits with
//! an error, as cert-manager's controller does; the Deployment restarts it
//! as a candidate. Its loops get the margin between the renew deadline and
//! the lease duration to finish; whatever is still running then is left
//! behind by the exit.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use thiserror::Error;
use tokio::time::Instant;

use crate::shutdown::CancellationToken;

/// The Lease's name: one per install, like cert-manager's
/// `cert-manager-controller`.
pub const LEASE_NAME: &str = "cert-csi-controller";

/// The timings and place of the election; defaults are cert-manager's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    pub namespace: String,
    pub name: String,
    /// Who this process is, in the Lease's `holderIdentity`.
    pub identity: String,
    /// How long a candidate waits on an unchanged Lease before taking it.
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often the leader renews and a candidate looks again.
    pub retry_period: Duration,
}

/// What is wrong with the election flags.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ElectionConfigError {
    #[error(
        "--leader-election-lease-duration ({lease:?}) must be longer than --leader-election-renew-deadline ({renew:?}), so that a leader stops before another may start; raise the lease duration or lower the deadline"
    )]
    LeaseNotAboveDeadline { lease: Duration, renew: Duration },
    #[error(
        "--leader-election-renew-deadline ({renew:?}) must be more than 1.2 × --leader-election-retry-period ({retry:?}), so that a leader gets at least one retry before it gives up; raise the deadline or lower the retry period"
    )]
    DeadlineNotAboveRetry { renew: Duration, retry: Duration },
    #[error(
        "--leader-election-lease-duration ({0:?}) is below one second, the Lease's unit; use at least 1s"
    )]
    LeaseTooShort(Duration),
    #[error(
        "--leader-election-retry-period is zero; use a period such as 15s (cert-manager's default)"
    )]
    ZeroRetry,
    #[error(
        "--leader-election-namespace is empty; name the namespace the Lease lives in (the chart uses the release's)"
    )]
    EmptyNamespace,
}

impl ElectionConfig {
    /// cert-manager's defaults (`--leader-election-*` of its controller).
    pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(60);
    pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(40);
    pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(15);

    /// The same checks client-go makes when an election is built.
    pub fn validate(&self) -> Result<(), ElectionConfigError> {
        if self.namespace.trim().is_empty() {
            return Err(ElectionConfigError::EmptyNamespace);
        }
        if self.retry_period.is_zero() {
            return Err(ElectionConfigError::ZeroRetry);
        }
        if self.lease_duration < Duration::from_secs(1) {
            return Err(ElectionConfigError::LeaseTooShort(self.lease_duration));
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(ElectionConfigError::LeaseNotAboveDeadline {
                lease: self.lease_duration,
                renew: self.renew_deadline,
            });
        }
        if self.renew_deadline.as_secs_f64() <= 1.2 * self.retry_period.as_secs_f64() {
            return Err(ElectionConfigError::DeadlineNotAboveRetry {
                renew: self.renew_deadline,
                retry: self.retry_period,
            });
        }
        Ok(())
    }
}

/// A unique identity for this process: `name` (the pod's, or else the
/// host's) and a random suffix, so a restarted pod is a new candidate and
/// never mistakes its predecessor's Lease for its own.
pub fn identity_for(name: Option<&str>) -> String {
    let host = name
        .map(str::to_owned)
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "cert-csi".to_owned());
    format!("{host}_{:016x}", rand::random::<u64>())
}

/// The parts of a Lease that say who holds it and since when; a change in
/// any of them restarts a candidate's wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub holder: String,
    pub lease_duration: Duration,
    pub acquire_time: Option<MicroTime>,
    pub renew_time: Option<MicroTime>,
    pub transitions: i32,
}

impl Record {
    pub fn of(lease: &Lease) -> Record {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity.unwrap_or_default(),
            lease_duration: Duration::from_secs(
                spec.lease_duration_seconds.unwrap_or(0).max(0) as u64
            ),
            acquire_time: spec.acquire_time,
            renew_time: spec.renew_time,
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}

/// What a candidate may do with a Lease it just read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Ours already: renew it.
    Renew,
    /// Free or expired: take it.
    Take,
    /// Another holder's, and still fresh: wait.
    Wait,
}

/// The decision, as a pure function: `record` as last read, first seen
/// unchanged at `observed_at`.
pub fn verdict(record: &Record, identity: &str, observed_at: Instant, now: Instant) -> Verdict {
    if record.holder == identity {
        Verdict::Renew
    } else if record.holder.is_empty() || now >= observed_at + record.lease_duration {
        Verdict::Take
    } else {
        Verdict::Wait
    }
}

/// Why leading ended.
#[derive(Debug, Error)]
pub enum LeaderError {
    #[error(
        "leader election lost: the Lease {namespace}/{name} was not renewed within the renew deadline ({deadline:?}){}; stopping so that another replica can lead",
        last_error.as_deref().map(|e| format!(", last error: {e}")).unwrap_or_default()
    )]
    DeadlinePassed {
        namespace: String,
        name: String,
        deadline: Duration,
        last_error: Option<String>,
    },
    #[error(
        "leader election lost: the Lease {namespace}/{name} is now held by {holder:?}; stopping"
    )]
    TakenBy {
        namespace: String,
        name: String,
        holder: String,
    },
}

/// Where this process stands, for `/metrics` and the log.
pub trait ElectionObserver: Send + Sync {
    fn leading(&self, leading: bool);
}

impl ElectionObserver for () {
    fn leading(&self, _: bool) {}
}

/// client-go's `leader_election_master_status{name}` gauge, which
/// cert-manager's controller serves: 1 while this process leads, else 0.
#[derive(Clone)]
pub struct LeaderGauge {
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl LeaderGauge {
    pub fn register(registry: &mut prometheus_client::registry::Registry, lease: &str) -> Self {
        use prometheus_client::metrics::family::Family;
        let family =
            Family::<Vec<(String, String)>, prometheus_client::metrics::gauge::Gauge>::default();
        registry.register(
            "leader_election_master_status",
            "1 while this process holds the leader Lease named by `name`, else 0",
            family.clone(),
        );
        let gauge = family
            .get_or_create(&vec![("name".to_owned(), lease.to_owned())])
            .clone();
        Self { gauge }
    }
}

impl ElectionObserver for LeaderGauge {
    fn leading(&self, leading: bool) {
        self.gauge.set(i64::from(leading));
    }
}

/// A candidate: what it last saw of the Lease.
struct Candidate {
    api: Api<Lease>,
    config: ElectionConfig,
    observed: Option<(Record, Instant)>,
    /// The Lease as this process last wrote it (for the guarded renewals).
    mine: Option<Lease>,
}

/// What one attempt to take or renew found.
enum Attempt {
    Held,
    NotHeld { holder: String },
}

impl Candidate {
    fn now_micro() -> MicroTime {
        MicroTime(jiff::Timestamp::now())
    }

    fn spec_for(&self, previous: Option<&Record>) -> LeaseSpec {
        let now = Self::now_micro();
        let ours = previous.is_some_and(|r| r.holder == self.config.identity);
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
            acquire_time: if ours {
                previous.and_then(|r| r.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(match previous {
                Some(r) if !ours => r.transitions + 1,
                Some(r) => r.transitions,
                None => 0,
            }),
            ..Default::default()
        }
    }

    /// One round of client-go's `tryAcquireOrRenew`.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let current = match self.api.get_opt(&self.config.name).await? {
            Some(lease) => lease,
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec_for(None)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(created) => {
                        self.mine = Some(created);
                        Ok(Attempt::Held)
                    }
                    // Another candidate created it first.
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::NotHeld {
                        holder: String::new(),
                    }),
                    Err(e) => Err(e),
                };
            }
        };
        let record = Record::of(&current);
        let now = Instant::now();
        if self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| *seen != record)
        {
            self.observed = Some((record.clone(), now));
        }
        let observed_at = self.observed.as_ref().map_or(now, |(_, at)| *at);
        if verdict(&record, &self.config.identity, observed_at, now) == Verdict::Wait {
            return Ok(Attempt::NotHeld {
                holder: record.holder,
            });
        }
        let mut next = current;
        next.spec = Some(self.spec_for(Some(&record)));
        // `next` keeps the resourceVersion read above: the replace fails
        // with a conflict if anyone wrote in between.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &next)
            .await
        {
            Ok(written) => {
                self.observed = Some((Record::of(&written), Instant::now()));
                self.mine = Some(written);
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::NotHeld {
                holder: record.holder,
            }),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up on a clean shutdown: an empty holder and a
    /// one-second duration, as client-go's ReleaseOnCancel writes.
    async fn release(&mut self) {
        let Some(mut lease) = self.mine.take() else {
            return;
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(Self::now_micro());
        lease.spec = Some(spec);
        let params = PostParams::default();
        let write = self.api.replace(&self.config.name, &params, &lease);
        match tokio::time::timeout(self.config.retry_period, write).await {
            Ok(Ok(_)) => tracing::info!(lease = %self.config.name, "released the leader Lease"),
            Ok(Err(error)) => tracing::warn!(%error, "could not release the leader Lease"),
            Err(_) => tracing::warn!("gave up releasing the leader Lease"),
        }
    }
}

/// Waits until this process leads, runs `lead` with a token that is
/// cancelled when leading ends, and returns:
/// - `Ok(())` after `shutdown`, once `lead` has returned and the Lease is
///   released;
/// - `Err` when leadership is lost (renew deadline passed, or the Lease was
///   taken), once `lead` has returned or its grace has run out.
pub async fn run<F, Fut>(
    client: kube::Client,
    config: ElectionConfig,
    observer: &dyn ElectionObserver,
    shutdown: CancellationToken,
    lead: F,
) -> Result<(), LeaderError>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut candidate = Candidate {
        api: Api::namespaced(client, &config.namespace),
        config: config.clone(),
        observed: None,
        mine: None,
    };
    observer.leading(false);
    tracing::info!(
        identity = %config.identity,
        lease = %format!("{}/{}", config.namespace, config.name),
        "waiting to become the leader"
    );
    // Standing by.
    let mut last_holder = None;
    let mut renewed_at = loop {
        let sent = Instant::now();
        let attempt = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            a = tokio::time::timeout(config.retry_period, candidate.try_acquire_or_renew()) => a,
        };
        match attempt {
            Ok(Ok(Attempt::Held)) => break sent,
            Ok(Ok(Attempt::NotHeld { holder })) => {
                if last_holder.as_ref() != Some(&holder) {
                    tracing::info!(%holder, "another replica leads; standing by");
                    last_holder = Some(holder);
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "reading the leader Lease failed; retrying"),
            Err(_) => tracing::warn!("reading the leader Lease timed out; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(jittered(config.retry_period)) => {}
        }
    };
    tracing::info!(identity = %config.identity, "became the leader");
    observer.leading(true);

    let loops_token = CancellationToken::new();
    let mut loops = tokio::spawn(lead(loops_token.clone()));
    let mut last_error: Option<String> = None;
    // Set when the loops' task has returned (it must not be awaited again).
    let mut loops_ended = false;
    let lost = loop {
        let deadline = renewed_at + config.renew_deadline;
        let next = (Instant::now() + config.retry_period).min(deadline);
        tokio::select! {
            () = shutdown.cancelled() => {
                loops_token.cancel();
                let _ = (&mut loops).await;
                observer.leading(false);
                candidate.release().await;
                return Ok(());
            }
            _ = &mut loops => {
                // The loops only return when cancelled; if they ended on
                // their own (a panic), stop leading so another replica can.
                loops_token.cancel();
                loops_ended = true;
                break LeaderError::DeadlinePassed {
                    namespace: config.namespace.clone(),
                    name: config.name.clone(),
                    deadline: config.renew_deadline,
                    last_error: Some("the controller loops ended".into()),
                };
            }
            () = tokio::time::sleep_until(next) => {}
        }
        if Instant::now() >= deadline {
            break LeaderError::DeadlinePassed {
                namespace: config.namespace.clone(),
                name: config.name.clone(),
                deadline: config.renew_deadline,
                last_error: last_error.take(),
            };
        }
        let sent = Instant::now();
        match tokio::time::timeout_at(deadline, candidate.try_acquire_or_renew()).await {
            Ok(Ok(Attempt::Held)) => {
                renewed_at = sent;
                last_error = None;
            }
            Ok(Ok(Attempt::NotHeld { holder })) if !holder.is_empty() => {
                break LeaderError::TakenBy {
                    namespace: config.namespace.clone(),
                    name: config.name.clone(),
                    holder,
                };
            }
            Ok(Ok(Attempt::NotHeld { .. })) => last_error = Some("write conflict".into()),
            Ok(Err(error)) => {
                tracing::warn!(%error, "renewing the leader Lease failed");
                last_error = Some(error.to_string());
            }
            // The deadline passed inside the call; the check above ends it.
            Err(_) => last_error = Some("the renewal did not answer in time".into()),
        }
    };
    tracing::error!(error = %lost, "stopping the controller loops");
    loops_token.cancel();
    observer.leading(false);
    // The loops get the margin before any other replica may lead.
    let grace = config.lease_duration.saturating_sub(config.renew_deadline) / 2;
    if !loops_ended && tokio::time::timeout(grace, loops).await.is_err() {
        tracing::warn!(
            ?grace,
            "controller loops did not stop in time; leaving them"
        );
    }
    Err(lost)
}

/// The retry period plus up to 20% (client-go's JitterFactor of 1.2), so
/// that candidates started together do not ask together.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(1.0 + rand::random::<f64>() * 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ElectionConfig {
        ElectionConfig {
            namespace: "cert-manager".into(),
            name: LEASE_NAME.into(),
            identity: "a".into(),
            lease_duration: ElectionConfig::DEFAULT_LEASE_DURATION,
            renew_deadline: ElectionConfig::DEFAULT_RENEW_DEADLINE,
            retry_period: ElectionConfig::DEFAULT_RETRY_PERIOD,
        }
    }

    #[test]
    fn cert_managers_defaults_are_valid_and_bad_timings_name_the_flag() {
        config().validate().unwrap();
        let mut c = config();
        c.renew_deadline = c.lease_duration;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("--leader-election-lease-duration"), "{err}");
        let mut c = config();
        c.retry_period = Duration::from_secs(35);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("--leader-election-retry-period"), "{err}");
        let mut c = config();
        c.namespace = " ".into();
        assert_eq!(c.validate(), Err(ElectionConfigError::EmptyNamespace));
        let mut c = config();
        c.retry_period = Duration::ZERO;
        assert_eq!(c.validate(), Err(ElectionConfigError::ZeroRetry));
    }

    fn record(holder: &str, seconds: u64) -> Record {
        Record {
            holder: holder.into(),
            lease_duration: Duration::from_secs(seconds),
            acquire_time: None,
            renew_time: None,
            transitions: 0,
        }
    }

    #[test]
    fn a_fresh_lease_of_another_waits_until_it_went_unchanged_for_its_duration() {
        let seen = Instant::now();
        let other = record("b", 10);
        assert_eq!(verdict(&other, "a", seen, seen), Verdict::Wait);
        let almost = seen + Duration::from_millis(9_999);
        assert_eq!(verdict(&other, "a", seen, almost), Verdict::Wait);
        let after = seen + Duration::from_secs(10);
        assert_eq!(verdict(&other, "a", seen, after), Verdict::Take);
    }

    #[test]
    fn a_released_lease_is_taken_at_once_and_ours_is_renewed() {
        let now = Instant::now();
        assert_eq!(verdict(&record("", 1), "a", now, now), Verdict::Take);
        assert_eq!(verdict(&record("a", 60), "a", now, now), Verdict::Renew);
    }

    #[test]
    fn identities_are_unique_per_process_start() {
        assert_ne!(identity_for(Some("p")), identity_for(Some("p")));
        assert!(identity_for(Some("pod-1")).starts_with("pod-1_"));
    }
}
