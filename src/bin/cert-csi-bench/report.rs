//! The goals of issue 8 beside the measured numbers, the printed table, the
//! JSON file and the plots.

use std::fmt::Write;
use std::path::Path;

use serde::Serialize;

use crate::controller::{IssueResult, MemoryResult};
use crate::scenarios::{P1, P2, P3, P4, P5, P6, Sizes};
use crate::svg;

/// A measurement's outcome: its numbers, or why it has none.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Outcome<T> {
    Done(T),
    Failed { error: String },
    Skipped { skipped: String },
}

impl<T> Outcome<T> {
    pub fn get(&self) -> Option<&T> {
        match self {
            Outcome::Done(t) => Some(t),
            _ => None,
        }
    }

    pub fn from_result(r: anyhow::Result<T>) -> Self {
        r.map_or_else(
            |e| Outcome::Failed {
                error: format!("{e:#}"),
            },
            Outcome::Done,
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct P7 {
    pub issue: Outcome<IssueResult>,
    pub memory: Outcome<MemoryResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_mib: u64,
    pub kernel: String,
}

impl Machine {
    pub fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_mib: crate::procfs::parse_status_kib(&meminfo, "MemTotal:").unwrap_or(0) / 1024,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub date: String,
    pub machine: Machine,
    pub build: &'static str,
    pub command: String,
    pub sizes: Sizes,
    #[serde(rename = "P1")]
    pub p1: Outcome<P1>,
    #[serde(rename = "P2")]
    pub p2: Outcome<P2>,
    #[serde(rename = "P3")]
    pub p3: Outcome<P3>,
    #[serde(rename = "P4")]
    pub p4: Outcome<P4>,
    #[serde(rename = "P5")]
    pub p5: Outcome<P5>,
    #[serde(rename = "P6")]
    pub p6: Outcome<P6>,
    #[serde(rename = "P7")]
    pub p7: P7,
    pub goals: Vec<Goal>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub enum Verdict {
    #[serde(rename = "PASS")]
    Pass,
    #[serde(rename = "MISS")]
    Miss,
    #[serde(rename = "NOT RUN")]
    NotRun,
}

impl Verdict {
    fn of(pass: bool) -> Verdict {
        if pass { Verdict::Pass } else { Verdict::Miss }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::NotRun => "NOT RUN",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub measure: &'static str,
    pub goal: &'static str,
    pub measured: String,
    pub verdict: Verdict,
    /// For a miss: what was over, and the command that profiles it.
    pub note: Option<String>,
}

const PROFILE_CPU: &str = "perf record -F 999 -g -- target/release/cert-csi-bench --only";

fn goal(
    measure: &'static str,
    goal: &'static str,
    measured: Option<(String, bool, String)>,
) -> Goal {
    match measured {
        Some((measured, pass, why)) => Goal {
            measure,
            goal,
            measured,
            verdict: Verdict::of(pass),
            note: (!pass).then_some(why),
        },
        None => Goal {
            measure,
            goal,
            measured: "-".into(),
            verdict: Verdict::NotRun,
            note: None,
        },
    }
}

/// The goals table of issue 8, judged against `r`. Pure, so the verdicts
/// are tested on made-up numbers.
pub fn judge(r: &Results) -> Vec<Goal> {
    let mut goals = Vec::new();
    goals.push(goal(
        "P1",
        "P-256 p50 ≤ 3 ms, p99 ≤ 10 ms; ≤ 1.5× the floor",
        r.p1.get()
            .and_then(|p| p.algorithms.iter().find(|a| a.algorithm == "P-256"))
            .map(|a| {
                let pass = a.publish.p50_ms <= 3.0 && a.publish.p99_ms <= 10.0 && a.ratio <= 1.5;
                (
                    format!(
                        "p50 {:.2} ms, p99 {:.2} ms; {:.2}× the floor ({:.2} ms)",
                        a.publish.p50_ms, a.publish.p99_ms, a.ratio, a.floor.total_ms
                    ),
                    pass,
                    format!(
                        "a publish costs {:.2} ms above its floor (the floor has one API round trip; a publish waits for the create, then for approve and sign, one write); profile: {PROFILE_CPU} p1",
                        a.publish.p50_ms - a.floor.total_ms
                    ),
                )
            }),
    ));
    goals.push(goal(
        "P2",
        "1,000 pods ≤ 2 s; exactly 1,000 requests; no errors",
        r.p2.get().map(|p| {
            let pass = p.wall_seconds <= 2.0 && p.requests_created == p.pods && p.errors == 0;
            (
                format!(
                    "{} pods in {:.2} s; {} requests; {} errors",
                    p.pods, p.wall_seconds, p.requests_created, p.errors
                ),
                pass,
                format!(
                    "{:.0} publishes/s; profile: {PROFILE_CPU} p2",
                    p.pods as f64 / p.wall_seconds
                ),
            )
        }),
    ));
    goals.push(goal(
        "P3",
        "≤ 15 MiB idle; ≤ 30 MiB at 10,000 volumes",
        r.p3.get().map(|p| {
            let pass = p.idle.rss_mib <= 15.0 && p.max.rss_mib <= 30.0;
            (
                format!(
                    "{:.1} MiB idle; {:.1} MiB at {} volumes ({:.1} KiB per volume)",
                    p.idle.rss_mib, p.max.rss_mib, p.max.volumes, p.per_volume_kib
                ),
                pass,
                format!(
                    "resident memory over the goal; {:.1} MiB of it idle is the mapped binary; heap profile: target/release/cert-csi-bench --only p3 --cert-csi hack/heaptrack-node",
                    p.idle.file_mib
                ),
            )
        }),
    ));
    goals.push(goal(
        "P4",
        "≤ 1% of a core idle at the largest count",
        r.p4.get().map(|p| {
            (
                format!(
                    "{:.2}% of a core at {} volumes over {:.0} s",
                    p.percent_of_core, p.volumes, p.seconds
                ),
                p.percent_of_core <= 1.0,
                format!("idle CPU over the goal; profile: {PROFILE_CPU} p4"),
            )
        }),
    ));
    goals.push(goal(
        "P5",
        "ready ≤ 1 s after SIGKILL; 0 requests",
        r.p5.get().map(|p| {
            (
                format!(
                    "ready in {:.3} s at {} volumes; {} requests",
                    p.ready_seconds, p.volumes, p.requests_created
                ),
                p.ready_seconds <= 1.0 && p.requests_created == 0,
                format!("recovery over the goal; profile: {PROFILE_CPU} p5"),
            )
        }),
    ));
    goals.push(goal(
        "P6",
        "never above the rate limit; spread over the whole jitter window",
        r.p6.get().map(|p| {
            let all = p.renewals == p.volumes;
            let pass =
                f64::from(p.max_per_second) <= p.rate_limit_per_second && p.coverage >= 0.8 && all;
            (
                format!(
                    "{} renewals of {}; max {}/s (limit {}/s); {:.0}% of the window's seconds used",
                    p.renewals,
                    p.volumes,
                    p.max_per_second,
                    p.rate_limit_per_second,
                    p.coverage * 100.0
                ),
                pass,
                if all {
                    "renewals above the limit or bunched; see p6_renewals.svg".into()
                } else {
                    "not every volume renewed in time; see the node log under --keep-scratch".into()
                },
            )
        }),
    ));
    let p7 = match (r.p7.issue.get(), r.p7.memory.get()) {
        (Some(i), Some(m)) => Some((
            format!(
                "{} Certificates in {:.1} s; {:.1} MiB with {} Secrets",
                i.certificates, i.seconds, m.rss_mib, m.secrets
            ),
            i.seconds <= 60.0 && m.rss_mib <= 64.0,
            format!(
                "{:.0} Certificates/s; profile: {PROFILE_CPU} p7",
                i.certificates as f64 / i.seconds
            ),
        )),
        _ => None,
    };
    goals.push(goal("P7", "10,000 Certificates ≤ 60 s; ≤ 64 MiB", p7));
    goals
}

/// The human-readable report.
pub fn text(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "cert-csi bench, {} build, {}{}\nmachine: {} ({} cores, {} MiB, kernel {})\n",
        r.build,
        r.date,
        if r.sizes.quick {
            " (--quick: small sizes; numbers are indicative only)"
        } else {
            ""
        },
        r.machine.cpu,
        r.machine.cores,
        r.machine.memory_mib,
        r.machine.kernel
    );
    match &r.p1 {
        Outcome::Done(p) => {
            let _ = writeln!(
                s,
                "P1 publish latency, sequential (node flags: {})",
                p.node_flags.join(" ")
            );
            let _ = writeln!(
                s,
                "  cpu: mean ms of CPU per publish and its unpublish, used by the node plugin and by the bench process (sandbox API server, controller, simulated kubelet)"
            );
            let _ = writeln!(
                s,
                "  {:<32} {:>5} {:>8} {:>8} {:>8} | {:>8} {:>8} | {:>7} {:>6} {:>6} {:>6} {:>6} {:>7} | {:>6}",
                "algorithm",
                "n",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "node cpu",
                "api cpu",
                "keygen",
                "csr",
                "sign",
                "api",
                "mount",
                "floor",
                "ratio"
            );
            for a in &p.algorithms {
                let f = &a.floor;
                let _ = writeln!(
                    s,
                    "  {:<32} {:>5} {:>8.2} {:>8.2} {:>8.2} | {:>8.2} {:>8.2} | {:>7.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>7.2} | {:>5.2}×",
                    a.algorithm,
                    a.publish.n,
                    a.publish.p50_ms,
                    a.publish.p90_ms,
                    a.publish.p99_ms,
                    a.cpu.node_ms,
                    a.cpu.bench_ms,
                    f.keygen_ms,
                    f.csr_ms,
                    f.sign_ms,
                    f.api_create_watch_ms,
                    f.mount_unmount_ms,
                    f.total_ms,
                    a.ratio
                );
            }
        }
        other => line(&mut s, "P1", other),
    }
    match &r.p2 {
        Outcome::Done(p) => {
            let _ = writeln!(
                s,
                "P2 burst: {} pods at once in {:.2} s, {} requests created, {} errors{} (node flags: {}); per publish p50 {:.1} ms, max {:.1} ms",
                p.pods,
                p.wall_seconds,
                p.requests_created,
                p.errors,
                p.first_error
                    .as_ref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
                p.node_flags.join(" "),
                p.latency.p50_ms,
                p.latency.max_ms
            );
        }
        other => line(&mut s, "P2", other),
    }
    match &r.p3 {
        Outcome::Done(p) => {
            let _ = writeln!(
                s,
                "P3 node RSS: idle {:.1} MiB; {} volumes {:.1} MiB; {} volumes {:.1} MiB ({:.1} KiB/volume; publishing them took {:.1} s)\n   of which mapped binary and libraries (file-backed): {:.1} / {:.1} / {:.1} MiB; anonymous: {:.1} / {:.1} / {:.1} MiB\n   largest count: {}",
                p.idle.rss_mib,
                p.mid.volumes,
                p.mid.rss_mib,
                p.max.volumes,
                p.max.rss_mib,
                p.per_volume_kib,
                p.publish_seconds_to_max,
                p.idle.file_mib,
                p.mid.file_mib,
                p.max.file_mib,
                p.idle.anon_mib,
                p.mid.anon_mib,
                p.max.anon_mib,
                p.max_volumes_note
            );
        }
        other => line(&mut s, "P3", other),
    }
    match &r.p4 {
        Outcome::Done(p) => {
            let _ = writeln!(
                s,
                "P4 idle CPU at {} volumes: {:.3} s over {:.1} s = {:.2}% of a core",
                p.volumes, p.cpu_seconds, p.seconds, p.percent_of_core
            );
            if let Some(rates) = &p.api_requests_per_s {
                let rates: Vec<String> = rates
                    .iter()
                    .map(|(verb, r)| format!("{verb} {r:.3}/s"))
                    .collect();
                let _ = writeln!(
                    s,
                    "P4 API requests meanwhile (cert-manager.io and Events): {}",
                    if rates.is_empty() {
                        "none".to_string()
                    } else {
                        rates.join(", ")
                    }
                );
            }
        }
        other => line(&mut s, "P4", other),
    }
    match &r.p5 {
        Outcome::Done(p) => {
            let _ = writeln!(
                s,
                "P5 SIGKILL + restart at {} volumes: Probe ready in {:.3} s, {} requests created, RSS after {:.1} MiB",
                p.volumes, p.ready_seconds, p.requests_created, p.rss_after_mib
            );
        }
        other => line(&mut s, "P5", other),
    }
    match &r.p6 {
        Outcome::Done(p) => {
            let _ = writeln!(
                s,
                "P6 renewals: {} volumes issued in {:.1} s (duration {} s, renew-before {} s, jitter {}); {} renewals, max {}/s per bin ({} in any sliding second), limit {}/s; window {:.0}–{:.0} s, {:.0}% of its seconds used",
                p.volumes,
                p.issuance_seconds,
                p.duration_seconds,
                p.renew_before_seconds,
                p.jitter,
                p.renewals,
                p.max_per_second,
                p.max_in_any_second,
                p.rate_limit_per_second,
                p.window.0,
                p.window.1,
                p.coverage * 100.0
            );
        }
        other => line(&mut s, "P6", other),
    }
    match &r.p7.issue {
        Outcome::Done(i) => {
            let _ = writeln!(
                s,
                "P7 controller: {} Certificates Ready in {:.1} s ({:.0}/s; creating them took {:.1} s)",
                i.certificates,
                i.seconds,
                i.certificates as f64 / i.seconds,
                i.create_seconds
            );
        }
        other => line(&mut s, "P7 issue", other),
    }
    match &r.p7.memory {
        Outcome::Done(m) => {
            let _ = writeln!(
                s,
                "P7 controller RSS with {} unrelated Secrets: {:.1} MiB (peak {:.1} MiB); a Certificate was Ready {:.1} s after creation",
                m.secrets, m.rss_mib, m.peak_mib, m.probe_ready_seconds
            );
        }
        other => line(&mut s, "P7 memory", other),
    }
    let _ = writeln!(s, "\n{:<4} {:<66} {:<8} measured", "", "goal", "verdict");
    for g in &r.goals {
        let _ = writeln!(
            s,
            "{:<4} {:<66} {:<8} {}",
            g.measure,
            g.goal,
            g.verdict.label(),
            g.measured
        );
    }
    let misses: Vec<&Goal> = r
        .goals
        .iter()
        .filter(|g| g.verdict == Verdict::Miss)
        .collect();
    if !misses.is_empty() {
        let _ = writeln!(s, "\nmisses:");
        for g in misses {
            let _ = writeln!(s, "  {}: {}", g.measure, g.note.as_deref().unwrap_or(""));
        }
    }
    s
}

fn line<T>(s: &mut String, name: &str, outcome: &Outcome<T>) {
    let _ = match outcome {
        Outcome::Done(_) => Ok(()),
        Outcome::Failed { error } => writeln!(s, "{name}: FAILED: {error}"),
        Outcome::Skipped { skipped } => writeln!(s, "{name}: skipped ({skipped})"),
    };
}

/// Writes `results.json` and the plots into `out`; returns the files.
pub fn write(r: &Results, out: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(out)?;
    let mut files = Vec::new();
    let json = out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(r)? + "\n")?;
    files.push(json);

    let p1_groups: Vec<(String, Vec<f64>)> =
        r.p1.get()
            .map(|p| {
                p.algorithms
                    .iter()
                    .map(|a| {
                        (
                            a.algorithm.to_string(),
                            vec![
                                a.publish.p50_ms,
                                a.publish.p90_ms,
                                a.publish.p99_ms,
                                a.floor.total_ms,
                            ],
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
    let p1 = out.join("p1_latency.svg");
    std::fs::write(
        &p1,
        svg::render(&svg::Chart {
            title: "P1 publish latency and its floor",
            y_label: "milliseconds",
            series: &["p50", "p90", "p99", "floor"],
            groups: &p1_groups,
            line: None,
            band: None,
            label_every: 1,
        }),
    )?;
    files.push(p1);

    let p3_groups: Vec<(String, Vec<f64>)> =
        r.p3.get()
            .map(|p| {
                [&p.idle, &p.mid, &p.max]
                    .iter()
                    .map(|m| (format!("{} volumes", m.volumes), vec![m.rss_mib]))
                    .collect()
            })
            .unwrap_or_default();
    let p3 = out.join("p3_memory.svg");
    std::fs::write(
        &p3,
        svg::render(&svg::Chart {
            title: "P3 node plugin resident memory",
            y_label: "MiB",
            series: &["VmRSS"],
            groups: &p3_groups,
            line: Some(("goal at 10,000 volumes: 30 MiB", 30.0)),
            band: None,
            label_every: 1,
        }),
    )?;
    files.push(p3);

    let (p6_groups, limit, band) = match r.p6.get() {
        Some(p) => (
            p.per_second
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("{i}"), vec![f64::from(*c)]))
                .collect::<Vec<_>>(),
            p.rate_limit_per_second,
            Some((
                p.window.0.max(0.0).floor() as usize,
                p.window.1.ceil() as usize,
            )),
        ),
        None => (Vec::new(), 0.0, None),
    };
    let limit_label = format!("rate limit {limit}/s");
    let p6 = out.join("p6_renewals.svg");
    std::fs::write(
        &p6,
        svg::render(&svg::Chart {
            title: "P6 renewals per second (seconds after the first publish)",
            y_label: "renewals per second",
            series: &["renewals"],
            groups: &p6_groups,
            line: Some((&limit_label, limit)),
            band: band.map(|(a, b)| ("jitter window", a, b)),
            label_every: (p6_groups.len() / 20).max(1),
        }),
    )?;
    files.push(p6);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::{CpuPerPublish, Floor, MemoryAt, P1Algorithm};
    use crate::stats::Summary;

    fn results() -> Results {
        let floor = Floor {
            keygen_ms: 0.1,
            csr_ms: 0.1,
            sign_ms: 0.1,
            api_create_watch_ms: 0.2,
            mount_unmount_ms: 0.5,
            total_ms: 1.0,
        };
        Results {
            date: "2026-01-01".into(),
            machine: Machine::this(),
            build: "test",
            command: "test".into(),
            sizes: Sizes::quick(),
            p1: Outcome::Done(P1 {
                node_flags: vec![],
                algorithms: vec![P1Algorithm {
                    algorithm: "P-256",
                    publish: Summary::of(&[1.2, 1.4, 1.3]),
                    cpu: CpuPerPublish::default(),
                    floor,
                    ratio: 1.3,
                }],
            }),
            p2: Outcome::Done(P2 {
                pods: 1000,
                node_flags: vec![],
                wall_seconds: 1.5,
                requests_created: 1001,
                errors: 0,
                first_error: None,
                latency: Summary::of(&[1.0]),
            }),
            p3: Outcome::Done(P3 {
                idle: MemoryAt {
                    volumes: 0,
                    rss_mib: 10.0,
                    anon_mib: 2.0,
                    file_mib: 8.0,
                },
                mid: MemoryAt {
                    volumes: 1000,
                    rss_mib: 12.0,
                    anon_mib: 4.0,
                    file_mib: 8.0,
                },
                max: MemoryAt {
                    volumes: 10_000,
                    rss_mib: 31.0,
                    anon_mib: 23.0,
                    file_mib: 8.0,
                },
                per_volume_kib: 2.0,
                max_volumes_note: String::new(),
                publish_seconds_to_max: 1.0,
            }),
            p4: Outcome::Skipped {
                skipped: "not asked".into(),
            },
            p5: Outcome::Failed {
                error: "boom".into(),
            },
            p6: Outcome::Done(P6 {
                volumes: 10,
                duration_seconds: 16,
                renew_before_seconds: 8,
                jitter: 0.5,
                rate_limit_per_second: 5.0,
                node_flags: vec![],
                issuance_seconds: 1.0,
                renewals: 10,
                per_second: vec![0, 0, 0, 0, 3, 3, 2, 2],
                max_per_second: 3,
                max_in_any_second: 3,
                window: (4.0, 8.0),
                coverage: 1.0,
            }),
            p7: P7 {
                issue: Outcome::Done(IssueResult {
                    certificates: 10_000,
                    seconds: 70.0,
                    create_seconds: 5.0,
                }),
                memory: Outcome::Done(MemoryResult {
                    secrets: 100_000,
                    rss_mib: 20.0,
                    peak_mib: 25.0,
                    probe_ready_seconds: 1.0,
                }),
            },
            goals: vec![],
        }
    }

    #[test]
    fn verdicts_follow_the_goals() {
        let goals = judge(&results());
        let verdict = |m: &str| goals.iter().find(|g| g.measure == m).unwrap().verdict;
        assert_eq!(verdict("P1"), Verdict::Pass);
        // 1001 requests for 1000 pods is a miss however fast.
        assert_eq!(verdict("P2"), Verdict::Miss);
        assert_eq!(verdict("P3"), Verdict::Miss);
        assert_eq!(verdict("P4"), Verdict::NotRun);
        assert_eq!(verdict("P5"), Verdict::NotRun);
        assert_eq!(verdict("P6"), Verdict::Pass);
        assert_eq!(verdict("P7"), Verdict::Miss);
        let p7 = goals.iter().find(|g| g.measure == "P7").unwrap();
        assert!(p7.note.as_deref().unwrap().contains("perf record"));
    }

    #[test]
    fn p6_over_the_limit_is_a_miss() {
        let mut r = results();
        if let Outcome::Done(p) = &mut r.p6 {
            p.max_per_second = 6;
        }
        let goals = judge(&r);
        assert_eq!(
            goals.iter().find(|g| g.measure == "P6").unwrap().verdict,
            Verdict::Miss
        );
    }

    #[test]
    fn json_has_every_measure_and_text_names_failures() {
        let mut r = results();
        r.goals = judge(&r);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for key in ["P1", "P2", "P3", "P4", "P5", "P6", "P7"] {
            assert!(v.get(key).is_some(), "{key} missing");
        }
        assert_eq!(v["P5"]["error"], "boom");
        assert_eq!(v["P4"]["skipped"], "not asked");
        let text = text(&r);
        assert!(text.contains("P5: FAILED: boom"));
        assert!(text.contains("MISS"));
        // Each number of the P3 line sits under its own words.
        assert!(text.contains("publishing them took 1.0 s"), "{text}");
        assert!(
            text.contains("(file-backed): 8.0 / 8.0 / 8.0 MiB; anonymous: 2.0 / 4.0 / 23.0 MiB"),
            "{text}"
        );
        assert!(
            text.contains("8.0 MiB of it idle is the mapped binary"),
            "{text}"
        );
    }
}
