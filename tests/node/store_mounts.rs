//! The store against the real kernel: tmpfs and bind mounts, modes,
//! ownership, and the atomic swap under a concurrent reader.
//!
//! These tests need root. Without it they skip, except under CI=true, where
//! skipping would hide a broken runner, so they fail.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use cert_csi::pki::Secret;
use cert_csi::store::{
    DATA_LINK, MountEntry, RequestPhase, RequestRef, Store, StoreError, StoreErrorKind,
    StoreOptions, VolumeState, assert_no_key_material_outside_tmpfs, is_mounted, read_mountinfo,
};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

fn have_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("tests/store_mounts.rs needs root for tmpfs and bind mounts, and CI=true");
    }
    eprintln!("skipping: not root (mount tests need CAP_SYS_ADMIN)");
    false
}

/// A scratch data root that unmounts whatever a failed test left below it,
/// so one failure does not leak mounts into the next run.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap().join("data")
    }

    fn target(&self, name: &str) -> PathBuf {
        let pods = self.dir.path().canonicalize().unwrap().join("pods");
        fs::create_dir_all(&pods).unwrap();
        pods.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Ok(base) = self.dir.path().canonicalize() else {
            return;
        };
        let Ok(table) = read_mountinfo() else { return };
        // Deepest first, so bind mounts go before the tmpfs they come from.
        let mut below: Vec<PathBuf> = table
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&base))
            .collect();
        below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in below {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn volume_id(n: u32) -> String {
    format!("csi-{n:064x}")
}

fn mounts_at(path: &Path) -> Vec<MountEntry> {
    read_mountinfo()
        .unwrap()
        .into_iter()
        .filter(|m| m.mount_point == path)
        .collect()
}

fn mounts_below(path: &Path) -> Vec<MountEntry> {
    read_mountinfo()
        .unwrap()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(path))
        .collect()
}

fn files(gen_: &str) -> Vec<(&'static str, String, u32)> {
    vec![
        ("tls.crt", format!("cert {gen_}"), 0o440),
        ("tls.key", format!("key {gen_}"), 0o440),
    ]
}

#[test]
fn tmpfs_is_hardened_size_limited_and_reused() {
    if !have_root() {
        return;
    }
    let s = Scratch::new();
    let options = StoreOptions {
        tmpfs_size_bytes: 1024 * 1024,
        ..StoreOptions::default()
    };
    let store = Store::open_with(s.root(), options).unwrap();
    assert_eq!(
        fs::metadata(s.root()).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    let vol = store.prepare(&volume_id(1)).unwrap();
    let mnt = vol.tmpfs_path();

    let entries = mounts_at(&mnt);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let m = &entries[0];
    assert_eq!(m.fs_type, "tmpfs");
    for opt in ["nodev", "noexec", "nosuid", "rw"] {
        assert!(m.has_mount_option(opt), "{opt} missing: {m:?}");
    }
    assert_eq!(m.super_option("size"), Some("1024k"), "{m:?}");
    assert_eq!(m.super_option("mode"), Some("700"), "{m:?}");
    let st = nix::sys::statfs::statfs(&mnt).unwrap();
    assert_eq!(st.blocks() * st.block_size() as u64, 1024 * 1024);
    assert_eq!(
        fs::metadata(&mnt).unwrap().permissions().mode() & 0o7777,
        0o700
    );

    // More than the limit does not fit, and says so as exhausted resources.
    let big = vec![b'x'; 2 * 1024 * 1024];
    let err = vol.publish(&[("big", &big[..], 0o440)], None).unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::ResourceExhausted, "{err}");

    // Preparing again reuses the tmpfs and what is in it.
    vol.publish(&files("1"), None).unwrap();
    let again = store.prepare(&volume_id(1)).unwrap();
    assert_eq!(mounts_at(&mnt).len(), 1);
    assert_eq!(
        fs::read_to_string(again.pod_path().join("tls.crt")).unwrap(),
        "cert 1"
    );

    // Concurrent prepares of one new volume stack no second tmpfs.
    let id = volume_id(2);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let id = id.clone();
            thread::spawn(move || store.prepare(&id).map(|v| v.tmpfs_path()))
        })
        .collect();
    let paths: Vec<PathBuf> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    assert_eq!(mounts_at(&paths[0]).len(), 1);

    store.remove(&volume_id(1), &s.target("unused-1")).unwrap();
    store.remove(&id, &s.target("unused-2")).unwrap();
}

#[test]
fn bind_mount_is_read_only_hardened_and_idempotent() {
    if !have_root() {
        return;
    }
    let s = Scratch::new();
    let store = Store::open(s.root()).unwrap();
    let vol = store.prepare(&volume_id(3)).unwrap();
    vol.publish(&files("1"), None).unwrap();
    let target = s.target("mount");
    assert!(!target.exists());
    assert!(!vol.is_mounted_at(&target).unwrap());

    vol.mount_at(&target).unwrap();
    let entries = mounts_at(&target);
    assert_eq!(entries.len(), 1, "{entries:?}");
    for opt in ["ro", "nodev", "noexec", "nosuid"] {
        assert!(entries[0].has_mount_option(opt), "{opt}: {:?}", entries[0]);
    }
    assert_eq!(entries[0].root, Path::new("/pod"));
    assert!(vol.is_mounted_at(&target).unwrap());
    assert!(is_mounted(&target).unwrap());
    assert_eq!(fs::read_to_string(target.join("tls.key")).unwrap(), "key 1");

    let err = fs::write(target.join("new-file"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(Errno::EROFS as i32), "{err}");
    let err = fs::remove_file(target.join("tls.key")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(Errno::EROFS as i32), "{err}");

    // A renewal shows through the existing mount.
    vol.publish(&files("2"), None).unwrap();
    assert_eq!(fs::read_to_string(target.join("tls.key")).unwrap(), "key 2");

    vol.mount_at(&target).unwrap();
    assert_eq!(
        mounts_at(&target).len(),
        1,
        "a repeated publish stacks nothing"
    );

    // A half-finished mount (writable bind, crash before the remount) is repaired.
    store.remove(&volume_id(3), &target).unwrap();
    let vol = store.prepare(&volume_id(3)).unwrap();
    fs::create_dir(&target).unwrap();
    nix::mount::mount(
        Some(&vol.pod_path()),
        &target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    assert!(!mounts_at(&target)[0].has_mount_option("ro"));
    vol.mount_at(&target).unwrap();
    let entries = mounts_at(&target);
    assert_eq!(entries.len(), 1);
    assert!(entries[0].has_mount_option("ro"));

    // Another volume may not take over the target.
    let other = store.prepare(&volume_id(4)).unwrap();
    let err = other.mount_at(&target).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(
        err.to_string().contains(&target.display().to_string()),
        "{err}"
    );

    store.remove(&volume_id(3), &target).unwrap();
    store.remove(&volume_id(4), &s.target("none")).unwrap();
}

fn mode_and_gid(path: &Path) -> (u32, u32) {
    let m = fs::metadata(path).unwrap();
    (m.permissions().mode() & 0o7777, m.gid())
}

#[test]
fn modes_and_group_ownership() {
    if !have_root() {
        return;
    }
    let s = Scratch::new();
    let store = Store::open(s.root()).unwrap();
    let vol = store.prepare(&volume_id(5)).unwrap();
    let pod = vol.pod_path();

    vol.publish(&files("1"), None).unwrap();
    assert_eq!(mode_and_gid(&pod), (0o550, 0));
    assert_eq!(mode_and_gid(&pod.join(DATA_LINK)), (0o550, 0));
    assert_eq!(mode_and_gid(&pod.join("tls.key")), (0o440, 0));
    assert_eq!(mode_and_gid(&pod.join("tls.crt")), (0o440, 0));

    let gid = 4321;
    let with_group: Vec<_> = files("2")
        .into_iter()
        .map(|(n, c, _)| (n, c, cert_csi::store::default_file_mode(Some(gid))))
        .collect();
    vol.publish(&with_group, Some(gid)).unwrap();
    assert_eq!(mode_and_gid(&pod), (0o550, gid));
    assert_eq!(mode_and_gid(&pod.join(DATA_LINK)), (0o550, gid));
    assert_eq!(mode_and_gid(&pod.join("tls.key")), (0o440, gid));
    assert_eq!(mode_and_gid(&pod.join("tls.crt")), (0o440, gid));
    // Files are owned by root; only the group is the pod's.
    assert_eq!(fs::metadata(pod.join("tls.key")).unwrap().uid(), 0);

    // Dropping the group takes access away again.
    vol.publish(&files("3"), None).unwrap();
    assert_eq!(mode_and_gid(&pod), (0o550, 0));
    assert_eq!(mode_and_gid(&pod.join("tls.key")), (0o440, 0));

    // The mounted view carries the same modes.
    let target = s.target("modes");
    vol.mount_at(&target).unwrap();
    assert_eq!(mode_and_gid(&target), (0o550, 0));
    store.remove(&volume_id(5), &target).unwrap();
}

#[test]
fn publish_removes_stale_names_and_refuses_reserved_ones() {
    if !have_root() {
        return;
    }
    let s = Scratch::new();
    let store = Store::open(s.root()).unwrap();
    let vol = store.prepare(&volume_id(6)).unwrap();
    let pod = vol.pod_path();
    vol.publish(
        &[
            ("tls.crt", "c", 0o440),
            ("tls.key", "k", 0o440),
            ("ca.crt", "a", 0o440),
        ],
        None,
    )
    .unwrap();
    assert!(pod.join("ca.crt").exists());
    vol.publish(&files("2"), None).unwrap();
    assert!(
        fs::symlink_metadata(pod.join("ca.crt")).is_err(),
        "ca.crt must be gone"
    );
    let visible: Vec<String> = fs::read_dir(&pod)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with(".."))
        .collect();
    let mut visible = visible;
    visible.sort();
    assert_eq!(visible, ["tls.crt", "tls.key"]);
    // Current plus the one kept for readers mid-swap.
    let generations = fs::read_dir(&pod)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name().into_string().unwrap();
            n.starts_with("..") && n != DATA_LINK
        })
        .count();
    assert_eq!(generations, 2);

    for bad in ["..data", "../escape", "a/b", "..hidden", ""] {
        let err = vol.publish(&[(bad, "x", 0o440)], None).unwrap_err();
        assert!(err.is_invalid_argument(), "{bad:?}: {err}");
    }
    // A refused publish changed nothing.
    assert_eq!(fs::read_to_string(pod.join("tls.key")).unwrap(), "key 2");
    store.remove(&volume_id(6), &s.target("none")).unwrap();
}

/// What the reader thread saw.
#[derive(Debug, Default)]
struct ReadStats {
    /// Reads that overlapped at most one publish, which the store
    /// guarantees to be invisible.
    quiet_reads: u64,
    /// Reads that overlapped two publishes or more (the reader was
    /// descheduled). The store keeps one previous generation, not all, so
    /// such a read may find its generation deleted.
    long_reads: u64,
    /// Violations: a missing file in a quiet read.
    missing: Vec<String>,
    /// Missing files in long reads (counted, not a violation).
    missing_long: u64,
    /// Violations: mismatched pairs although `..data` did not move.
    torn_stable: Vec<String>,
    /// Violations: mismatched pairs read through one `..data` handle.
    torn_dirfd: Vec<String>,
    /// Mismatched pairs whose two opens by name straddled a swap
    /// (expected now and then for two independent opens; not a violation).
    straddled: u64,
}

fn read_path(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn generation_of(contents: &str) -> &str {
    contents.rsplit(' ').next().unwrap_or_default()
}

/// Reads key and certificate two ways until `stop`: by name (as most
/// programs do) and through one handle on `..data` (the consistent way).
/// `started`/`completed` count publishes, so each read can tell whether it
/// stayed within the store's guarantee.
fn reader(
    pod: PathBuf,
    stop: Arc<AtomicBool>,
    started: Arc<AtomicU64>,
    completed: Arc<AtomicU64>,
) -> ReadStats {
    let mut stats = ReadStats::default();
    let data = pod.join(DATA_LINK);
    let mut missing = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let done_at_start = completed.load(Ordering::SeqCst);
        missing.clear();

        let before = fs::read_link(&data).ok();
        let key = read_path(&pod.join("tls.key"));
        let crt = read_path(&pod.join("tls.crt"));
        let after = fs::read_link(&data).ok();
        match (key, crt) {
            (Ok(k), Ok(c)) if generation_of(&k) != generation_of(&c) => {
                if before == after {
                    stats.torn_stable.push(format!("{k} / {c}"));
                } else {
                    stats.straddled += 1;
                }
            }
            (Ok(_), Ok(_)) => {}
            (k, c) => missing.extend(k.err().into_iter().chain(c.err())),
        }

        match fs::File::open(&data) {
            Err(e) => missing.push(format!("..data: {e}")),
            Ok(dir) => {
                let read_at = |name: &str| -> Result<String, String> {
                    let fd = openat(dir.as_fd(), name, OFlag::O_RDONLY, Mode::empty())
                        .map_err(|e| format!("{name} via ..data handle: {e}"))?;
                    let mut s = String::new();
                    fs::File::from(fd)
                        .read_to_string(&mut s)
                        .map_err(|e| e.to_string())?;
                    Ok(s)
                };
                match (read_at("tls.key"), read_at("tls.crt")) {
                    (Ok(k), Ok(c)) if generation_of(&k) != generation_of(&c) => {
                        stats.torn_dirfd.push(format!("{k} / {c}"));
                    }
                    (Ok(_), Ok(_)) => {}
                    (k, c) => missing.extend(k.err().into_iter().chain(c.err())),
                }
            }
        }

        // Publishes that overlapped this read: the ones started by its end,
        // minus those already finished at its start.
        if started.load(Ordering::SeqCst) - done_at_start <= 1 {
            stats.quiet_reads += 1;
            stats.missing.append(&mut missing);
        } else {
            stats.long_reads += 1;
            stats.missing_long += missing.len() as u64;
        }
    }
    stats
}

#[test]
fn atomic_swap_never_shows_a_missing_file_or_a_torn_pair() {
    if !have_root() {
        return;
    }
    let s = Scratch::new();
    let store = Store::open(s.root()).unwrap();
    let vol = store.prepare(&volume_id(7)).unwrap();
    vol.publish(&files("0"), None).unwrap();
    let target = s.target("swap");
    vol.mount_at(&target).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    // Read through the pod's read-only mount, exactly as the pod would.
    let reader_thread = {
        let (stop, target) = (Arc::clone(&stop), target.clone());
        let (started, completed) = (Arc::clone(&started), Arc::clone(&completed));
        thread::spawn(move || reader(target, stop, started, completed))
    };
    const SWAPS: u32 = 500;
    let clock = std::time::Instant::now();
    for n in 1..=SWAPS {
        started.fetch_add(1, Ordering::SeqCst);
        vol.publish(&files(&n.to_string()), None).unwrap();
        completed.fetch_add(1, Ordering::SeqCst);
        // Real renewals are hours apart; a short pause lets the reader run
        // several reads per generation while swaps still land mid-read.
        thread::sleep(Duration::from_micros(200));
    }
    let elapsed = clock.elapsed();
    stop.store(true, Ordering::Relaxed);
    let stats = reader_thread.join().unwrap();
    eprintln!(
        "{SWAPS} swaps in {elapsed:?}; {} quiet reads, {} long reads \
         ({} missing files there), {} by-name pairs straddled a swap",
        stats.quiet_reads, stats.long_reads, stats.missing_long, stats.straddled
    );

    assert!(
        stats.quiet_reads > u64::from(SWAPS),
        "reader barely ran: {stats:?}"
    );
    assert!(
        stats.missing.is_empty(),
        "missing files: {:?}",
        stats.missing
    );
    assert!(
        stats.torn_stable.is_empty(),
        "torn pairs: {:?}",
        stats.torn_stable
    );
    assert!(
        stats.torn_dirfd.is_empty(),
        "torn pairs: {:?}",
        stats.torn_dirfd
    );
    assert_eq!(
        fs::read_to_string(target.join("tls.key")).unwrap(),
        format!("key {SWAPS}")
    );
    store.remove(&volume_id(7), &target).unwrap();
}

#[test]
fn pending_key_round_trip_stays_private() {
    if !have_root() {
        return;
    }
    let s = Scratch::new();
    let store = Store::open(s.root()).unwrap();
    let vol = store.prepare(&volume_id(8)).unwrap();
    assert!(vol.read_pending_key().unwrap().is_none());
    let pem = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";
    vol.write_pending_key(&Secret(pem.to_vec())).unwrap();
    assert_eq!(vol.read_pending_key().unwrap().unwrap().0, pem);

    // A fresh handle (as after a plugin restart) finds it again.
    let again = store.prepare(&volume_id(8)).unwrap();
    assert_eq!(again.read_pending_key().unwrap().unwrap().0, pem);

    // Not reachable from the pod's view, and not on persistent disk.
    vol.publish(&files("1"), None).unwrap();
    let target = s.target("pending");
    vol.mount_at(&target).unwrap();
    let mut seen = Vec::new();
    let mut stack = vec![target.clone()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                seen.push(fs::read(e.path()).unwrap());
            }
        }
    }
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|c| !c.windows(11).any(|w| w == b"PRIVATE KEY"))
    );
    assert_no_key_material_outside_tmpfs(store.root()).unwrap();

    let key_path = vol.tmpfs_path().join("private/pending.key");
    assert_eq!(mode_and_gid(&key_path), (0o600, 0));
    assert_eq!(mode_and_gid(&vol.tmpfs_path().join("private")).0, 0o700);

    vol.clear_pending_key().unwrap();
    vol.clear_pending_key().unwrap();
    assert!(vol.read_pending_key().unwrap().is_none());

    // With the tmpfs gone, the key is refused rather than written to disk.
    store.remove(&volume_id(8), &target).unwrap();
    let err = vol.write_pending_key(&Secret(pem.to_vec())).unwrap_err();
    assert!(err.to_string().contains("tmpfs is not mounted"), "{err}");
    assert_no_key_material_outside_tmpfs(store.root()).unwrap();
}

#[test]
fn remove_is_idempotent_and_leaves_nothing() {
    if !have_root() {
        return;
    }
    let s = Scratch::new();
    let store = Store::open(s.root()).unwrap();
    let id = volume_id(9);
    let vol = store.prepare(&id).unwrap();
    vol.publish(&files("1"), None).unwrap();
    let target = s.target("remove");
    vol.mount_at(&target).unwrap();
    store
        .save_state(&VolumeState::new(&id, &target, BTreeMap::new(), "fp"))
        .unwrap();
    assert_eq!(mounts_below(&s.root()).len(), 1);

    store.remove(&id, &target).unwrap();
    assert!(mounts_at(&target).is_empty());
    assert!(mounts_below(&s.root()).is_empty());
    assert!(!target.exists(), "target directory removed");
    assert!(!vol.path().exists(), "volume directory removed");
    assert!(store.volume_ids().unwrap().is_empty());

    // Twice, an unknown volume, and a target already gone.
    store.remove(&id, &target).unwrap();
    store.remove(&volume_id(999), &s.target("never")).unwrap();
    let vol = store.prepare(&id).unwrap();
    vol.mount_at(&target).unwrap();
    nix::mount::umount2(&target, nix::mount::MntFlags::empty()).unwrap();
    fs::remove_dir(&target).unwrap();
    store.remove(&id, &target).unwrap();
    assert!(mounts_below(&s.root()).is_empty());
    assert!(!vol.path().exists());

    // A busy target (a process holds a directory open inside it) is
    // detached lazily instead of failing the unpublish.
    let vol = store.prepare(&id).unwrap();
    vol.publish(&files("1"), None).unwrap();
    vol.mount_at(&target).unwrap();
    let holder = fs::File::open(&target).unwrap();
    store.remove(&id, &target).unwrap();
    assert!(mounts_below(&s.root()).is_empty());
    assert!(mounts_at(&target).is_empty());
    drop(holder);

    // A target holding someone else's files is left alone, with an error.
    let vol = store.prepare(&id).unwrap();
    fs::create_dir(&target).unwrap();
    fs::write(target.join("not-ours"), "x").unwrap();
    let err = store.remove(&id, &target).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(target.join("not-ours").exists());
    fs::remove_file(target.join("not-ours")).unwrap();
    store.remove(&id, &target).unwrap();
    assert!(!vol.path().exists());

    let err = store.remove("../../etc", &target).unwrap_err();
    assert!(err.is_invalid_argument(), "{err}");
}

#[test]
fn state_round_trip_listing_and_corruption() {
    if !have_root() {
        return;
    }
    let s = Scratch::new();
    let store = Store::open(s.root()).unwrap();
    let a = volume_id(10);
    let b = volume_id(11);
    store.prepare(&a).unwrap();
    store.prepare(&b).unwrap();

    let mut ctx = BTreeMap::new();
    ctx.insert(
        "csi.cert-manager.io/issuer-name".to_owned(),
        "ca".to_owned(),
    );
    ctx.insert("csi.storage.k8s.io/pod.name".to_owned(), "web-0".to_owned());
    let mut state = VolumeState::new(&a, "/var/lib/kubelet/pods/x/mount", ctx, "sha256:ab");
    state.node_id = Some("node-1".into());
    state.request = Some(RequestRef {
        namespace: "default".into(),
        name: "web-0-abcde".into(),
        phase: RequestPhase::Issued,
    });
    state.not_before = Some("2025-06-01T00:00:00Z".parse().unwrap());
    state.not_after = Some("2025-06-02T00:00:00Z".parse().unwrap());
    state.next_renewal = Some("2025-06-01T16:00:00Z".parse().unwrap());
    state.renewal_attempts = 2;
    store.save_state(&state).unwrap();
    assert_eq!(store.load_state(&a).unwrap(), state);

    let path = store.root().join("volumes").join(&a).join("state.json");
    assert_eq!(mode_and_gid(&path).0, 0o600);
    assert!(!path.with_extension("json.tmp").exists());

    // b has no state yet: listed as an id, skipped as a state.
    assert_eq!(store.volume_ids().unwrap(), vec![a.clone(), b.clone()]);
    assert_eq!(store.list().unwrap(), vec![state.clone()]);

    // Overwrite keeps only the new content.
    state.renewal_attempts = 0;
    store.save_state(&state).unwrap();
    assert_eq!(store.load_state(&a).unwrap().renewal_attempts, 0);

    fs::write(&path, "{\"version\":1,\"volume_id\":").unwrap();
    let err = store.load_state(&a).unwrap_err();
    assert!(matches!(err, StoreError::CorruptState { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(err.kind(), StoreErrorKind::FailedPrecondition);
    // One bad file does not hide the others.
    let mut sb = state.clone();
    sb.volume_id = b.clone();
    store.save_state(&sb).unwrap();
    assert_eq!(store.list().unwrap(), vec![sb]);

    // A state whose volume_id disagrees with its directory is refused.
    let mut wrong = state.clone();
    wrong.volume_id = b.clone();
    fs::write(&path, serde_json::to_vec(&wrong).unwrap()).unwrap();
    assert!(store.load_state(&a).is_err());

    // Tokens never reach the disk.
    let mut with_token = state.clone();
    with_token.context.insert(
        "csi.storage.k8s.io/serviceAccount.tokens".into(),
        "{\"aud\":{\"token\":\"x\"}}".into(),
    );
    let err = store.save_state(&with_token).unwrap_err();
    assert!(err.is_invalid_argument(), "{err}");

    store.remove(&a, &s.target("a")).unwrap();
    store.remove(&b, &s.target("b")).unwrap();
}

#[test]
fn invalid_volume_ids_are_rejected_everywhere() {
    if !have_root() {
        return;
    }
    let s = Scratch::new();
    let store = Store::open(s.root()).unwrap();
    let long = "a".repeat(256);
    for bad in ["", ".", "..", "../x", "a/b", "a\0b", long.as_str()] {
        assert!(
            store.prepare(bad).unwrap_err().is_invalid_argument(),
            "{bad:?}"
        );
        assert!(store.load_state(bad).unwrap_err().is_invalid_argument());
        assert!(
            store
                .remove(bad, &s.target("x"))
                .unwrap_err()
                .is_invalid_argument()
        );
    }
    assert!(mounts_below(&s.root()).is_empty());
    assert!(store.volume_ids().unwrap().is_empty());
}

#[test]
fn key_scan_flags_disk_and_ignores_tmpfs() {
    if !have_root() {
        return;
    }
    let s = Scratch::new();
    let store = Store::open(s.root()).unwrap();
    let vol = store.prepare(&volume_id(12)).unwrap();
    let pem = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
    vol.publish(&[("tls.key", pem, 0o440)], None).unwrap();
    vol.write_pending_key(&Secret(pem.as_bytes().to_vec()))
        .unwrap();
    assert_no_key_material_outside_tmpfs(store.root()).unwrap();

    let planted = vol.path().join("leaked.pem");
    fs::write(&planted, pem).unwrap();
    let err = assert_no_key_material_outside_tmpfs(store.root()).unwrap_err();
    assert!(err.contains("leaked.pem"), "{err}");
    assert!(
        !err.contains("tls.key"),
        "tmpfs content must be skipped: {err}"
    );
    fs::remove_file(&planted).unwrap();

    store.remove(&volume_id(12), &s.target("k")).unwrap();
    assert_no_key_material_outside_tmpfs(store.root()).unwrap();
}
