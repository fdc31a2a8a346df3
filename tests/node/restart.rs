//! Restart without loss: 200 volumes survive SIGKILL of the plugin with no
//! request made twice, keep renewing afterwards, and renewals that were
//! pending at the kill complete with the very request that was pending.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cert_csi::store::{RequestPhase, VolumeState};
use cert_csi::volume::keys;
use futures::StreamExt;
use kube::ResourceExt;
use test_kit::{Env, Options, Policy, VolumeRequest, volume_state};

const PODS: usize = 10;
const VOLUMES_PER_POD: usize = 20;
const NAMESPACE: &str = "restart-200";

fn states(env: &Env, volumes: &[VolumeRequest]) -> Vec<VolumeState> {
    volumes
        .iter()
        .map(|v| volume_state(&env.data_root, v).expect("node state of a published volume"))
        .collect()
}

/// Polls node state until `done` holds for every volume.
async fn wait_all(
    env: &Env,
    volumes: &[VolumeRequest],
    limit: Duration,
    what: &str,
    done: impl Fn(usize, &VolumeState) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        let states = states(env, volumes);
        let missing = states
            .iter()
            .enumerate()
            .filter(|(i, s)| !done(*i, s))
            .count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {missing} of {} volumes not there within {limit:?}; log tail:\n{}",
            volumes.len(),
            env.log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Request names by the volume-id hash label they carry.
fn names_by_volume(requests: &[cert_csi::api::CertificateRequest]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for r in requests {
        let hash = r
            .labels()
            .get(cert_csi::issuance::VOLUME_LABEL)
            .cloned()
            .unwrap_or_default();
        out.entry(hash).or_default().push(r.name_any());
    }
    out
}

fn request_name(state: &VolumeState) -> String {
    state
        .request
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_default()
}

fn phase(state: &VolumeState) -> Option<RequestPhase> {
    state.request.as_ref().map(|r| r.phase)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_volumes_survive_sigkill_without_new_requests() {
    if !test_kit::require_root("two_hundred_volumes_survive_sigkill_without_new_requests") {
        return;
    }
    // Limits wide enough that 200 pending renewals can be in flight at once.
    let mut env = Env::start_with_args(
        Options {
            publish_timeout: "30s",
            policy: Policy::Approve,
            controller: true,
        },
        &[
            "--max-request-rate",
            "500",
            "--max-inflight-requests",
            "400",
            "--renewal-retry-base",
            "1s",
            "--renewal-retry-max",
            "2s",
        ],
    )
    .await;
    let mut volumes = Vec::new();
    for p in 0..PODS {
        let pod = env.create_pod(NAMESPACE, &format!("app-{p}"), "app").await;
        for v in 0..VOLUMES_PER_POD {
            volumes.push(env.volume(
                &pod,
                &format!("tls-{v}"),
                &[
                    (keys::ISSUER_NAME, "ca"),
                    (keys::KEY_ALGORITHM, "ECDSA"),
                    // Renewed about twenty seconds after issuance.
                    (keys::DURATION, "60s"),
                    (keys::RENEW_BEFORE, "40s"),
                ],
            ));
        }
    }
    let started = Instant::now();
    futures::stream::iter(volumes.iter())
        .for_each_concurrent(16, |v| {
            let env = &env;
            async move { env.publish_ok(v).await }
        })
        .await;
    println!(
        "published {} volumes in {:?}",
        volumes.len(),
        started.elapsed()
    );
    assert_eq!(env.count_requests(NAMESPACE).await, volumes.len());
    let before_kill = states(&env, &volumes);
    let issued: Vec<String> = before_kill.iter().map(request_name).collect();

    // SIGKILL and restart: every volume is re-adopted, nothing requested.
    env.kill_plugin();
    let recovery = env.start_plugin().await;
    println!("restart after SIGKILL: ready in {recovery:?}");
    let listed = env.requests(NAMESPACE).await;
    // Read after the list: a volume not due by now cannot have renewed.
    let listed_at = jiff::Timestamp::now();
    let per_volume = names_by_volume(&listed);
    // Each volume still has exactly the request of its first issuance,
    // unless its renewal fell due meanwhile (on a loaded machine the 200
    // publishes can take long enough); no clock bound, just the schedule
    // the plugin recorded before it was killed.
    let mut due = 0;
    for ((v, state), first) in volumes.iter().zip(&before_kill).zip(&issued) {
        let names = per_volume
            .get(&cert_csi::store::id_hash(&v.volume_id))
            .cloned()
            .unwrap_or_default();
        if state.next_renewal.is_some_and(|at| at <= listed_at) {
            due += 1;
            assert!(
                names.contains(first) || names.len() == 1,
                "{}: a renewal due during the restart left {names:?}",
                v.volume_name
            );
        } else {
            assert_eq!(
                names,
                vec![first.clone()],
                "{}: requests changed on recovery",
                v.volume_name
            );
        }
    }
    println!(
        "{due} of {} volumes fell due during the restart",
        volumes.len()
    );
    assert_eq!(
        listed.len(),
        volumes.len() + per_volume.values().map(|n| n.len() - 1).sum::<usize>(),
        "requests of no volume"
    );
    assert!(
        env.log().contains("node state recovered"),
        "no recovery report in the log"
    );

    // All volumes keep renewing after the restart.
    wait_all(
        &env,
        &volumes,
        Duration::from_secs(40),
        "renewed after restart",
        |i, s| request_name(s) != issued[i] && phase(s) == Some(RequestPhase::Issued),
    )
    .await;
    let renewed: Vec<String> = states(&env, &volumes).iter().map(request_name).collect();

    // Killed while renewals are pending: hold every request undecided.
    env.cluster.set_policy(Policy::Ignore);
    wait_all(
        &env,
        &volumes,
        Duration::from_secs(40),
        "renewal pending",
        |i, s| request_name(s) != renewed[i] && phase(s) == Some(RequestPhase::Pending),
    )
    .await;
    let pending: Vec<String> = states(&env, &volumes).iter().map(request_name).collect();
    env.kill_plugin();
    env.start_plugin().await;
    env.cluster.set_policy(Policy::Approve);
    wait_all(
        &env,
        &volumes,
        Duration::from_secs(30),
        "pending renewal completed",
        |i, s| phase(s) == Some(RequestPhase::Issued) || request_name(s) != pending[i],
    )
    .await;

    // Each renewal deletes the request before it in the background, after
    // recording its certificate: poll until every volume is down to one
    // request (or the deadline passes, and the checks below say which).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (after, per_volume) = loop {
        let after = states(&env, &volumes);
        let per_volume = names_by_volume(&env.requests(NAMESPACE).await);
        let settled = volumes.iter().zip(&after).all(|(v, state)| {
            per_volume.get(&cert_csi::store::id_hash(&v.volume_id))
                == Some(&vec![request_name(state)])
        });
        if settled || Instant::now() >= deadline {
            break (after, per_volume);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for ((v, state), pending_name) in volumes.iter().zip(&after).zip(&pending) {
        assert_eq!(
            &request_name(state),
            pending_name,
            "{}: completed by another request than the pending one",
            v.volume_name
        );
        let hash = cert_csi::store::id_hash(&v.volume_id);
        let names = per_volume.get(&hash).cloned().unwrap_or_default();
        assert_eq!(
            names,
            vec![pending_name.clone()],
            "{}: exactly one request should be left",
            v.volume_name
        );
        let leaf = test_kit::served_leaf(v, "tls.crt");
        assert!(leaf.is_valid_at(std::time::SystemTime::now()));
    }
    env.finish().await;
}
