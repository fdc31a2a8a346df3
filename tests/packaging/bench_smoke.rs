//! `cert-csi-bench --quick` runs every measurement end to end and writes
//! well-formed results. Only the shape is checked, never a time: benchmarks
//! are not timed tests. The bench binary and `cert-csi` are the test-profile
//! builds cargo makes for integration tests, so no release build is added.
// The bench binary exists only with the `sandbox` feature (on by default).
#![cfg(feature = "sandbox")]

use std::path::Path;
use std::process::Command;

fn is_svg(text: &str) -> bool {
    let t = text.trim();
    t.starts_with("<svg ")
        && t.ends_with("</svg>")
        && t.matches("<svg").count() == 1
        && t.contains("xmlns=\"http://www.w3.org/2000/svg\"")
}

/// Every opened element is closed in order (self-closing ones aside): a
/// small well-formedness check, enough for the hand-written plots.
fn balanced(text: &str) -> Result<(), String> {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').ok_or("unterminated tag")? + start;
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            match stack.pop() {
                Some(open) if open == name.trim() => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
        } else if !tag.ends_with('/') {
            let name = tag.split_whitespace().next().unwrap_or_default();
            stack.push(name.to_string());
        }
    }
    if stack.is_empty() {
        Ok(())
    } else {
        Err(format!("unclosed: {stack:?}"))
    }
}

/// Runs `cert-csi-bench` from the repository with `args`, writing to
/// `out` and working in `work`; panics with its output on failure and
/// returns its stdout.
fn run_bench(args: &[&str], out: &Path, work: &Path) -> String {
    let run = Command::new(env!("CARGO_BIN_EXE_cert-csi-bench"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .arg("--out")
        .arg(out)
        .arg("--work-dir")
        .arg(work)
        .arg("--cert-csi")
        .arg(env!("CARGO_BIN_EXE_cert-csi"))
        .output()
        .expect("run cert-csi-bench");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "cert-csi-bench {} failed\nstdout:\n{stdout}\nstderr:\n{stderr}",
        args.join(" ")
    );
    stdout
}

/// Nothing is left mounted below `work`.
fn assert_nothing_mounted(work: &Path) {
    let work_path = work.canonicalize().unwrap();
    let left: Vec<_> = cert_csi::store::read_mountinfo()
        .unwrap()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(&work_path))
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
}

#[test]
fn quick_bench_writes_json_with_every_measure_and_svg_plots() {
    if !test_kit::require_root("quick_bench_writes_json_with_every_measure_and_svg_plots") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let stdout = run_bench(&["--quick"], out.path(), work.path());

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap())
            .expect("results.json parses");
    for key in ["P1", "P2", "P3", "P4", "P5", "P6"] {
        let v = &json[key];
        assert!(v.is_object(), "{key} missing from results.json");
        assert!(
            v.get("error").is_none() && v.get("skipped").is_none(),
            "{key}: {v}"
        );
    }
    for key in ["issue", "memory"] {
        assert!(json["P7"][key].is_object(), "P7.{key} missing");
        assert!(
            json["P7"][key].get("error").is_none(),
            "P7.{key}: {}",
            json["P7"][key]
        );
    }
    let algorithms = json["P1"]["algorithms"].as_array().expect("P1 algorithms");
    let names: Vec<&str> = algorithms
        .iter()
        .filter_map(|a| a["algorithm"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "P-256",
            "P-384",
            "Ed25519",
            "RSA-2048",
            "RSA-2048, --rsa-key-pool-size 0",
            "RSA-2048, pool of n+3, back to back"
        ]
    );
    for a in algorithms {
        assert!(a["publish"]["p99_ms"].is_number() && a["floor"]["total_ms"].is_number());
        // Every publish costs both processes some CPU; a zero would mean
        // the schedstat reading measured nothing.
        for side in ["node_ms", "bench_ms"] {
            let ms = a["cpu"][side].as_f64().unwrap_or(0.0);
            assert!(ms > 0.0, "{} cpu.{side} = {ms}", a["algorithm"]);
        }
    }
    // Counts, not times: the burst made exactly one request per pod and
    // the restart made none.
    assert_eq!(json["P2"]["requests_created"], json["P2"]["pods"]);
    assert_eq!(json["P2"]["errors"], 0);
    assert_eq!(json["P5"]["requests_created"], 0);
    assert!(json["P6"]["per_second"].is_array());
    let goals = json["goals"].as_array().expect("goals");
    assert_eq!(goals.len(), 7);
    assert!(goals.iter().all(|g| g["verdict"] != "NOT RUN"), "{goals:?}");

    for plot in ["p1_latency.svg", "p3_memory.svg", "p6_renewals.svg"] {
        let text = std::fs::read_to_string(out.path().join(plot)).unwrap();
        assert!(is_svg(&text), "{plot} is not an <svg> document");
        balanced(&text).unwrap_or_else(|e| panic!("{plot}: {e}"));
        assert!(text.contains("<rect"), "{plot} has no bars");
    }
    assert!(stdout.contains("PASS") || stdout.contains("MISS"));

    // Nothing left mounted or running below the work directory.
    assert_nothing_mounted(work.path());
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        0,
        "scratch directory left behind"
    );
}

/// `--quick --peer`: cert-csi and cert-manager's csi-driver side by side on
/// a real control plane. Shape and counts only, never times.
#[test]
fn quick_peer_bench_compares_both_drivers_on_the_real_control_plane() {
    if !test_kit::require_root("quick_peer_bench_compares_both_drivers_on_the_real_control_plane") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let stdout = run_bench(&["--quick", "--peer"], out.path(), work.path());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("peer.json")).unwrap())
            .expect("peer.json parses");
    let drivers = json["drivers"].as_array().expect("drivers");
    let names: Vec<&str> = drivers
        .iter()
        .filter_map(|d| d["driver"].as_str())
        .collect();
    assert_eq!(
        names,
        ["cert-csi", "cert-csi, limiter lifted", "csi-driver v0.15.0"]
    );
    for d in drivers {
        let name = d["driver"].as_str().unwrap();
        // Every pod of the burst got its volume, each from one request.
        assert_eq!(d["burst"]["failures"], 0, "{name}: {d}");
        assert_eq!(d["burst"]["requests"], d["burst"]["volumes"], "{name}");
        for key in ["p1_p256", "p1_rsa2048"] {
            assert!(
                d[key]["p50_ms"].as_f64().is_some_and(|v| v > 0.0),
                "{name} {key}"
            );
        }
        assert!(
            d["with_volumes"]["rss_mib"]
                .as_f64()
                .is_some_and(|v| v > 0.0)
        );
        assert!(d["load_per_s"].is_object(), "{name}");
        assert!(
            d["idle_cpu_percent"].as_f64().is_some_and(|v| v >= 0.0),
            "{name}"
        );
        assert!(d["restart"]["ready_s"].is_number(), "{name}");
        if name.starts_with("cert-csi") {
            // A restart resumes its volumes without asking again.
            assert_eq!(d["restart"]["new_requests"], 0, "{name}");
        }
    }
    assert!(stdout.contains("csi-driver ÷ cert-csi"), "{stdout}");
    assert_nothing_mounted(work.path());
}
