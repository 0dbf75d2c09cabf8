//! Release safety of the shipped `playbooks/production-deploy-transactional.yml`, end to end with
//! real processes (`rampart run --local`, the real sample app): whatever goes wrong with an
//! artifact, the host is left as it was.
//!
//! - a corpus of malicious tarballs (absolute paths, `..`, escaping symlinks and hardlinks, device
//!   and fifo entries, a gzip bomb) is refused while v1 keeps running: same pid, the error names
//!   the entry, nothing staged, nothing written outside the state dir; setuid bits are stripped;
//! - archives past configured `max_bytes` / `max_entries` limits are refused;
//! - a corrupt artifact (wrong digest, flipped byte) is refused before any service stops;
//! - a disk that fills up during extraction (a small tmpfs as the state dir) is a clean error;
//! - the same version deployed twice is a no-op, `--check` changes nothing, a failed deploy leaves
//!   no residue;
//! - a release whose service does not start is rolled back exactly.
//!
//! Every archive is built here, with raw tar headers (the `tar` crate's own path checks would
//! refuse most of the corpus), into named folders of the scenario's scratch dir (`malicious/`,
//! `broken/`, `corrupt/`, `big/`, `ok/`). Each test has its own scenario and port.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use rampart_tests::CliRun;
use rampart_tests::deploy::{Scenario, deploy_playbook, tree_snapshot};
use rampart_tests::{dir_names, sha256_hex};
use serde_json::{Value, json};
use tar::{EntryType, Header};

/// The version every refused artifact is deployed as.
const EVIL_VERSION: &str = "6.6.6";
const MIB: usize = 1024 * 1024;
/// `extract::DEFAULT_MAX_BYTES` (2 GiB): what the shipped playbook allows an archive to expand to.
const DEFAULT_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Archives
// ---------------------------------------------------------------------------------------------

/// One entry of a test archive, written with a raw header (name and link target taken literally).
#[derive(Debug, Clone)]
struct Member {
    name: String,
    kind: EntryType,
    mode: u32,
    data: Vec<u8>,
    link: Option<String>,
}

impl Member {
    fn file(name: &str, data: &[u8], mode: u32) -> Member {
        Member {
            name: name.into(),
            kind: EntryType::Regular,
            mode,
            data: data.to_vec(),
            link: None,
        }
    }
    fn dir(name: &str, mode: u32) -> Member {
        Member {
            kind: EntryType::Directory,
            ..Member::file(name, b"", mode)
        }
    }
    fn symlink(name: &str, target: &str) -> Member {
        Member {
            kind: EntryType::Symlink,
            link: Some(target.into()),
            ..Member::file(name, b"", 0o777)
        }
    }
    fn hardlink(name: &str, target: &str) -> Member {
        Member {
            kind: EntryType::Link,
            link: Some(target.into()),
            ..Member::file(name, b"", 0o644)
        }
    }
    fn special(name: &str, kind: EntryType) -> Member {
        Member {
            kind,
            ..Member::file(name, b"", 0o644)
        }
    }
}

/// Writes `name` into the header's 100-byte name field as is (no normalisation, no checks).
fn set_raw_name(h: &mut Header, name: &str) {
    let bytes = name.as_bytes();
    let field = &mut h.as_old_mut().name;
    assert!(bytes.len() <= field.len(), "entry name too long: {name}");
    field.fill(0);
    field[..bytes.len()].copy_from_slice(bytes);
}

/// A `.tar.gz` of `members`, in order.
fn targz(members: &[Member]) -> Vec<u8> {
    let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    for m in members {
        let mut h = Header::new_gnu();
        set_raw_name(&mut h, &m.name);
        h.set_entry_type(m.kind);
        h.set_mode(m.mode);
        h.set_size(m.data.len() as u64);
        h.set_mtime(1_700_000_000);
        if let Some(link) = &m.link {
            h.set_link_name_literal(link).unwrap();
        }
        if matches!(m.kind, EntryType::Char | EntryType::Block) {
            // /dev/null's numbers.
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        b.append(&h, m.data.as_slice()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// The entries of a packaged sample-app release, to build variants of it.
fn sample_members(sc: &Scenario, version: &str) -> Vec<Member> {
    let file = File::open(sc.dist.join(format!("sample-app-{version}.tar.gz"))).unwrap();
    let mut archive = tar::Archive::new(GzDecoder::new(file));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let kind = e.header().entry_type();
            let mode = e.header().mode().unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            Member {
                name,
                kind,
                mode,
                data,
                link: None,
            }
        })
        .collect()
}

/// Replaces the data (and mode) of the entry called `name`.
fn replace(members: &mut [Member], name: &str, data: &[u8], mode: u32) {
    let m = members
        .iter_mut()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no entry {name}"));
    m.data = data.to_vec();
    m.mode = mode;
}

/// Raw deflate of `input`, ending with `flush` (`Full`: byte-aligned and with nothing after it
/// referring back before it; `Finish`: the final block).
fn deflate(c: &mut Compress, input: &[u8], flush: FlushCompress) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 64 * 1024);
    let start = c.total_in();
    loop {
        let consumed = usize::try_from(c.total_in() - start).unwrap();
        let status = c.compress_vec(&input[consumed..], &mut out, flush).unwrap();
        let consumed = usize::try_from(c.total_in() - start).unwrap();
        let done = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            _ => consumed == input.len() && out.len() < out.capacity(),
        };
        if done {
            return out;
        }
        out.reserve(64 * 1024);
    }
}

/// A gzip bomb: a valid `.tar.gz` whose one entry `name` holds `size` zero bytes, about 1/1000th
/// of that compressed. Cheap to build: one fully flushed deflate block of 1 MiB of zeros repeated
/// (a full flush means no block refers back to another), and the CRC combined arithmetically.
fn gzip_bomb(name: &str, size: u64) -> Vec<u8> {
    let mut h = Header::new_gnu();
    set_raw_name(&mut h, name);
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    // After the header everything is zero: the data, its padding and the two end blocks.
    let zeros_after = size.div_ceil(512) * 512 + 1024;
    let chunks = zeros_after / MIB as u64;
    let rest = usize::try_from(zeros_after % MIB as u64).unwrap();

    let zero_chunk = vec![0u8; MIB];
    let mut c = Compress::new(Compression::best(), false);
    let mut crc = Crc::new();
    // gzip header: deflate, no flags, no mtime, unknown OS.
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.extend(deflate(&mut c, h.as_bytes(), FlushCompress::Full));
    crc.update(h.as_bytes());
    let block = deflate(&mut c, &zero_chunk, FlushCompress::Full);
    let mut chunk_crc = Crc::new();
    chunk_crc.update(&zero_chunk);
    for _ in 0..chunks {
        out.extend_from_slice(&block);
        crc.combine(&chunk_crc);
    }
    out.extend(deflate(&mut c, &zero_chunk[..rest], FlushCompress::Finish));
    crc.update(&zero_chunk[..rest]);
    out.extend(crc.sum().to_le_bytes());
    out.extend(crc.amount().to_le_bytes());
    out
}

/// `len` bytes that do not compress (xorshift64).
fn incompressible(len: usize) -> Vec<u8> {
    let mut x = rampart_tests::XorShift(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&x.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes an artifact to `<scratch>/<folder>/<name>.tar.gz`; returns its path and sha256.
fn write_artifact(sc: &Scenario, folder: &str, name: &str, bytes: &[u8]) -> (String, String) {
    let dir = sc.path().join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.tar.gz"));
    std::fs::write(&path, bytes).unwrap();
    (path.display().to_string(), sha256_hex(bytes))
}

// ---------------------------------------------------------------------------------------------
// Deploys and what they leave
// ---------------------------------------------------------------------------------------------

/// Deploys `artifact` as `version` with the shipped playbook.
fn deploy_artifact(sc: &Scenario, version: &str, artifact: &str, sha256: &str) -> CliRun {
    sc.run(
        &deploy_playbook(),
        &sc.vars_with(version, artifact, sha256),
        &[],
    )
}

/// Asserts a run's exit code and outcome, printing its output when they differ.
fn assert_outcome(run: &CliRun, code: i32, outcome: &str, what: &str) {
    assert_eq!(
        run.code, code,
        "[{what}] exit code\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert_eq!(
        run.summary()["outcome"],
        outcome,
        "[{what}]\n{}",
        run.stdout
    );
}

/// Deploys a packaged version that must succeed; returns the app's pid.
fn deploy_ok(sc: &Scenario, version: &str) -> i32 {
    let run = sc.deploy(version, &[]);
    assert_outcome(&run, 0, "succeeded", &format!("deploy {version}"));
    assert_eq!(
        sc.serving().as_deref(),
        Some(version),
        "serving after {version}"
    );
    sc.app_pid().expect("the app runs after a deploy")
}

/// The messages of every failed task (and of every failed loop item).
fn failure_messages(run: &CliRun) -> Vec<String> {
    let mut out = Vec::new();
    for task in run
        .json()
        .iter()
        .filter(|v| v["type"] == "task" && v["status"] == "failed")
    {
        let result = &task["result"];
        out.extend(result["msg"].as_str().map(str::to_string));
        for item in result["results"].as_array().into_iter().flatten() {
            if item["failed"] == true {
                out.extend(item["msg"].as_str().map(str::to_string));
            }
        }
    }
    out
}

/// Asserts one failure message contains every needle.
fn assert_failure_mentions(run: &CliRun, needles: &[&str], what: &str) {
    let msgs = failure_messages(run);
    assert!(
        msgs.iter().any(|m| needles.iter().all(|n| m.contains(n))),
        "[{what}] no failure message contains all of {needles:?}: {msgs:#?}"
    );
}

/// The name of the task the rescue reports as failed (`rolling back: <task> failed`).
fn rescued_task(run: &CliRun) -> Option<String> {
    run.tasks().into_iter().find_map(|(name, section, _)| {
        (section == "rescue")
            .then(|| {
                name.strip_prefix("rolling back: ")?
                    .strip_suffix(" failed")
                    .map(str::to_string)
            })
            .flatten()
    })
}

/// The path of a `tree_snapshot` line (`D path mode`, `F path mode sha`, `L path -> target`).
fn snapshot_path(line: &str) -> &str {
    line.split(' ').nth(1).unwrap_or_default()
}

/// The directory holding the public path symlink.
fn public_dir(sc: &Scenario) -> PathBuf {
    sc.public_path().parent().unwrap().to_path_buf()
}

/// `tree_snapshot` of the state dir's `apps/`.
fn apps_tree(sc: &Scenario) -> Vec<String> {
    tree_snapshot(&sc.state.join("apps"))
}

/// What a deploy leaves in the state dir that no finished deploy may leave: staging dirs, temp
/// symlinks, partial uploads, the playbook's deploy lock. Also temp symlinks beside the public
/// path.
fn residue(sc: &Scenario) -> Vec<String> {
    let mut out: Vec<String> = tree_snapshot(&sc.state)
        .into_iter()
        .filter(|line| {
            let path = snapshot_path(line);
            let name = path.rsplit('/').next().unwrap_or_default();
            name.starts_with(".staging-")
                || name.contains("rampart-tmp")
                || path.starts_with("artifacts/tmp/")
                || path == "locks/deploy.json"
        })
        .collect();
    out.extend(
        tree_snapshot(&public_dir(sc))
            .into_iter()
            .filter(|line| line.contains("rampart-tmp")),
    );
    out
}

/// The versions under `apps/app/releases/`.
fn releases(sc: &Scenario) -> Vec<String> {
    dir_names(&sc.state.join("apps/app/releases"))
}

/// The names under `apps/app/failed/`.
fn failed_releases(sc: &Scenario) -> Vec<String> {
    dir_names(&sc.state.join("apps/app/failed"))
}

/// `apps/` without what a failed deploy legitimately changes: the failed release set apart under
/// `failed/` and `state.json`'s bookkeeping.
fn good_releases_tree(sc: &Scenario) -> Vec<String> {
    apps_tree(sc)
        .into_iter()
        .filter(|line| {
            let path = snapshot_path(line);
            path != "app/state.json" && path != "app/failed" && !path.starts_with("app/failed/")
        })
        .collect()
}

/// The host after an artifact was refused at staging: the same app process serving `serving`,
/// `apps/` exactly as before, nothing staged or set apart for `version`, none of `digests`
/// cached, no residue.
fn assert_untouched(
    sc: &Scenario,
    what: &str,
    version: &str,
    digests: &[&str],
    pid: i32,
    serving: &str,
    apps_before: &[String],
) {
    assert_eq!(sc.serving().as_deref(), Some(serving), "[{what}] serving");
    assert_eq!(sc.app_pid(), Some(pid), "[{what}] the app was restarted");
    assert!(
        !sc.state.join("apps/app/releases").join(version).exists(),
        "[{what}] release {version} was staged"
    );
    assert!(
        !failed_releases(sc)
            .iter()
            .any(|f| f.starts_with(&format!("{version}-"))),
        "[{what}] {version} set apart although nothing was staged: {:?}",
        failed_releases(sc)
    );
    assert_eq!(apps_tree(sc), apps_before, "[{what}] apps/ changed");
    assert_eq!(residue(sc), Vec::<String>::new(), "[{what}] residue");
    for digest in digests {
        assert!(
            !sc.state.join("artifacts/sha256").join(digest).exists(),
            "[{what}] the refused artifact was cached as {digest}"
        );
    }
}

/// The host after a rolled-back deploy of `version` (transaction `txid`): serving `serving`,
/// releases, `current` and the public symlink byte for byte as `good_before`, the failed release
/// under `failed/<version>-<txid>/` only, and no residue.
fn assert_restored_exactly(
    sc: &Scenario,
    what: &str,
    version: &str,
    txid: &str,
    serving: &str,
    good_before: &[String],
    public_before: &[String],
) {
    assert_eq!(sc.serving().as_deref(), Some(serving), "[{what}] serving");
    assert_eq!(sc.current().as_deref(), Some(serving), "[{what}] current");
    assert_eq!(
        good_releases_tree(sc),
        good_before,
        "[{what}] releases, current or their files changed"
    );
    assert_eq!(
        tree_snapshot(&public_dir(sc)),
        public_before,
        "[{what}] public path changed"
    );
    assert!(
        !releases(sc).contains(&version.to_string()),
        "[{what}] failed {version} still among the good releases: {:?}",
        releases(sc)
    );
    assert_eq!(
        failed_releases(sc),
        [format!("{version}-{txid}")],
        "[{what}] failed/"
    );
    assert!(
        sc.state
            .join("apps/app/failed")
            .join(format!("{version}-{txid}"))
            .join("version.txt")
            .is_file(),
        "[{what}] the failed release is not kept whole for forensics"
    );
    assert_eq!(residue(sc), Vec::<String>::new(), "[{what}] residue");
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(sc.state.join("apps/app/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["current"], serving, "[{what}] state.json: {state}");
    assert!(
        !state["known_good"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v == version),
        "[{what}] state.json still calls the failed {version} known-good: {state}"
    );
}

/// A tmpfs mounted for one test; unmounted on drop (lazily when still busy).
#[derive(Debug)]
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test mounts a tmpfs and needs root: run the tests as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -t tmpfs on {}: {}",
            dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // The app (killed by the scenario's drop) may still hold its binary for a moment.
        let umount = |args: &[&str]| {
            Command::new("umount")
                .args(args)
                .arg(self.dir.path())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if umount(&[]) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        umount(&["-l"]);
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// One malicious archive: what it holds, the entry the error must name, a word of the reason,
/// and the paths outside the state dir it tries to create.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    entry: String,
    reason: &'static str,
    escapes: Vec<PathBuf>,
}

#[test]
fn malicious_archives_are_refused_and_leave_the_host_untouched() {
    let sc = Scenario::new();
    let pid = deploy_ok(&sc, "1.0.0");
    let apps_before = apps_tree(&sc);

    // Targets outside the state dir: a directory to escape into, a file to link to.
    let outside = sc.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let secret = outside.join("secret");
    std::fs::write(&secret, "do not touch\n").unwrap();
    let outside_before = tree_snapshot(&outside);
    let out = outside.display().to_string();
    let sec = secret.display().to_string();
    // The staging dir is `<scratch>/state/apps/app/.staging-…`: four `..` reach the scratch dir.
    let up4 = "../../../..";
    let benign = || Member::file("version.txt", b"6.6.6\n", 0o644);

    let cases = vec![
        Case {
            name: "absolute-path",
            bytes: targz(&[benign(), Member::file(&format!("{out}/abs"), b"x", 0o644)]),
            entry: format!("{out}/abs"),
            reason: "absolute path",
            escapes: vec![outside.join("abs")],
        },
        Case {
            name: "dotdot",
            bytes: targz(&[
                benign(),
                Member::file(&format!("{up4}/outside/dotdot"), b"x", 0o644),
            ]),
            entry: format!("{up4}/outside/dotdot"),
            reason: "`..`",
            escapes: vec![outside.join("dotdot")],
        },
        Case {
            name: "dotdot-inside-path",
            bytes: targz(&[
                benign(),
                Member::dir("bin", 0o755),
                Member::file(&format!("bin/{up4}/../outside/nested"), b"x", 0o644),
            ]),
            entry: format!("bin/{up4}/../outside/nested"),
            reason: "`..`",
            escapes: vec![outside.join("nested")],
        },
        Case {
            name: "symlink-absolute",
            bytes: targz(&[
                benign(),
                Member::symlink("escape", &out),
                Member::file("escape/via-abs-link", b"x", 0o644),
            ]),
            entry: "escape".into(),
            reason: "escapes the release",
            escapes: vec![outside.join("via-abs-link")],
        },
        Case {
            name: "symlink-climbing",
            bytes: targz(&[
                benign(),
                Member::symlink("up", &format!("{up4}/outside")),
                Member::file("up/via-rel-link", b"x", 0o644),
            ]),
            entry: "up".into(),
            reason: "escapes the release",
            escapes: vec![outside.join("via-rel-link")],
        },
        Case {
            name: "symlink-climbing-from-subdir",
            bytes: targz(&[
                benign(),
                Member::dir("bin", 0o755),
                Member::symlink("bin/up", "../../.."),
            ]),
            entry: "bin/up".into(),
            reason: "escapes the release",
            escapes: vec![],
        },
        Case {
            name: "hardlink-absolute",
            bytes: targz(&[benign(), Member::hardlink("stolen", &sec)]),
            entry: "stolen".into(),
            reason: "escapes the release",
            escapes: vec![],
        },
        Case {
            name: "hardlink-climbing",
            bytes: targz(&[
                benign(),
                Member::hardlink("stolen", &format!("{up4}/outside/secret")),
            ]),
            entry: "stolen".into(),
            reason: "escapes the release",
            escapes: vec![],
        },
        Case {
            name: "char-device",
            bytes: targz(&[benign(), Member::special("dev-null", EntryType::Char)]),
            entry: "dev-null".into(),
            reason: "device",
            escapes: vec![],
        },
        Case {
            name: "fifo",
            bytes: targz(&[benign(), Member::special("pipe", EntryType::Fifo)]),
            entry: "pipe".into(),
            reason: "fifo",
            escapes: vec![],
        },
        Case {
            name: "gzip-bomb",
            bytes: gzip_bomb("zeros", DEFAULT_MAX_BYTES + 1),
            entry: "zeros".into(),
            reason: "size limit",
            escapes: vec![],
        },
    ];

    for case in &cases {
        let what = case.name;
        let (path, sha) = write_artifact(&sc, "malicious", case.name, &case.bytes);
        let run = deploy_artifact(&sc, EVIL_VERSION, &path, &sha);
        assert_outcome(&run, 1, "rolled_back", what);
        assert_failure_mentions(&run, &[&format!("`{}`", case.entry), case.reason], what);
        assert_eq!(
            rescued_task(&run)
                .as_deref()
                .and_then(|t| t.split(' ').next()),
            Some("stage"),
            "[{what}] the failure was not the staging"
        );
        assert_untouched(&sc, what, EVIL_VERSION, &[&sha], pid, "1.0.0", &apps_before);
        assert_eq!(
            tree_snapshot(&outside),
            outside_before,
            "[{what}] written outside the state dir"
        );
        for p in &case.escapes {
            assert!(!p.exists(), "[{what}] {} was created", p.display());
        }
        assert_eq!(
            std::fs::metadata(&secret).unwrap().nlink(),
            1,
            "[{what}] the secret got a hardlink"
        );
    }
    // The bomb really is one: small, and a valid archive whose entry declares past the limit.
    let bomb = &cases.last().unwrap().bytes;
    assert!(bomb.len() < 4 * MIB, "bomb is {} bytes", bomb.len());
    let mut archive = tar::Archive::new(GzDecoder::new(&bomb[..]));
    let mut first = archive.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(first.size(), DEFAULT_MAX_BYTES + 1);
    let mut head = vec![1u8; 4 * MIB];
    first.read_exact(&mut head).unwrap();
    assert!(head.iter().all(|&b| b == 0));

    // Setuid and setgid bits are accepted but stripped on disk.
    let mut members = sample_members(&sc, "2.0.0");
    let start = members
        .iter()
        .find(|m| m.name == "start.sh")
        .unwrap()
        .data
        .clone();
    replace(&mut members, "start.sh", &start, 0o6755);
    members.push(Member::file("bin/suid-helper", b"#!/bin/sh\n", 0o4755));
    members.push(Member::file("sgid-conf", b"x = 1\n", 0o2644));
    members.push(Member::dir("sgid-dir", 0o2775));
    let (path, sha) = write_artifact(&sc, "ok", "setuid-5.0.0", &targz(&members));
    let run = deploy_artifact(&sc, "5.0.0", &path, &sha);
    assert_outcome(&run, 0, "succeeded", "setuid release");
    assert_eq!(sc.serving().as_deref(), Some("5.0.0"));
    let release = sc.state.join("apps/app/releases/5.0.0");
    for (file, want) in [
        ("start.sh", 0o755),
        ("bin/suid-helper", 0o755),
        ("sgid-conf", 0o644),
        ("sgid-dir", 0o775),
    ] {
        let mode = std::fs::metadata(release.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, want, "mode of {file}: {mode:o}");
    }
}

#[test]
fn archives_past_configured_limits_are_refused() {
    let sc = Scenario::new();
    let pid = deploy_ok(&sc, "1.0.0");
    let apps_before = apps_tree(&sc);
    let playbook = sc.path().join("stage-with-limits.yml");
    std::fs::write(
        &playbook,
        "\
- name: stage {{ target_version }} within limits
  hosts: all
  tasks:
    - name: stage {{ target_version }}
      release:
        component: app
        version: \"{{ target_version }}\"
        artifact: \"{{ artifact }}\"
        sha256: \"{{ sha256 }}\"
        state: staged
        max_bytes: \"{{ max_bytes }}\"
        max_entries: \"{{ max_entries }}\"
",
    )
    .unwrap();
    let stage = |path: &str, sha: &str, max_bytes: u64, max_entries: u64| {
        let vars = json!({
            "target_version": EVIL_VERSION, "artifact": path, "sha256": sha,
            "max_bytes": max_bytes, "max_entries": max_entries,
        });
        sc.run(&playbook, &vars, &[])
    };

    // 4 MiB of zeros: a few KiB compressed, past a 1 MiB limit.
    let zeros = vec![0u8; 4 * MIB];
    let bomb = targz(&[
        Member::file("version.txt", b"6.6.6\n", 0o644),
        Member::file("zeros", &zeros, 0o644),
    ]);
    assert!(bomb.len() < 64 * 1024, "compressed to {}", bomb.len());
    let (bomb_path, bomb_sha) = write_artifact(&sc, "malicious", "zeros-4m", &bomb);
    let run = stage(&bomb_path, &bomb_sha, MIB as u64, 100);
    assert_outcome(&run, 6, "failed", "past max_bytes");
    assert_failure_mentions(&run, &["`zeros`", "1048576"], "past max_bytes");
    assert_untouched(
        &sc,
        "past max_bytes",
        EVIL_VERSION,
        &[&bomb_sha],
        pid,
        "1.0.0",
        &apps_before,
    );

    // 30 empty files past a limit of 10 entries: the 11th is named.
    let names: Vec<String> = (0..30).map(|i| format!("f{i:02}")).collect();
    let many: Vec<Member> = names.iter().map(|n| Member::file(n, b"", 0o644)).collect();
    let (path, sha) = write_artifact(&sc, "malicious", "many-entries", &targz(&many));
    let run = stage(&path, &sha, MIB as u64, 10);
    assert_outcome(&run, 6, "failed", "past max_entries");
    assert_failure_mentions(&run, &["`f10`", "10 entries"], "past max_entries");
    assert_untouched(
        &sc,
        "past max_entries",
        EVIL_VERSION,
        &[&sha],
        pid,
        "1.0.0",
        &apps_before,
    );

    // The limits are the arguments': the same bomb within a larger limit is staged.
    let run = stage(&bomb_path, &bomb_sha, 8 * MIB as u64, 100);
    assert_outcome(&run, 0, "succeeded", "within raised limits");
    assert!(
        sc.state
            .join("apps/app/releases")
            .join(EVIL_VERSION)
            .join("zeros")
            .is_file()
    );
    assert_eq!(sc.app_pid(), Some(pid));
}

#[test]
fn wrong_digest_is_refused_before_any_service_stops() {
    let sc = Scenario::new();
    let pid = deploy_ok(&sc, "1.0.0");
    let apps_before = apps_tree(&sc);
    let artifact = sc.dist.join("sample-app-2.0.0.tar.gz");
    let actual = sha256_hex(&std::fs::read(&artifact).unwrap());
    let wrong = sha256_hex(b"not the artifact");
    let run = deploy_artifact(&sc, "2.0.0", artifact.to_str().unwrap(), &wrong);
    assert_outcome(&run, 1, "rolled_back", "wrong digest");
    assert_failure_mentions(&run, &[&wrong, &actual], "wrong digest");
    assert_untouched(
        &sc,
        "wrong digest",
        "2.0.0",
        &[&actual, &wrong],
        pid,
        "1.0.0",
        &apps_before,
    );
}

#[test]
fn flipped_byte_is_refused_before_any_service_stops() {
    let sc = Scenario::new();
    let pid = deploy_ok(&sc, "1.0.0");
    let apps_before = apps_tree(&sc);
    let good = std::fs::read(sc.dist.join("sample-app-2.0.0.tar.gz")).unwrap();
    let expected = sha256_hex(&good);
    let mut bytes = good.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    let (path, actual) = write_artifact(&sc, "corrupt", "sample-app-2.0.0-flipped", &bytes);
    let run = deploy_artifact(&sc, "2.0.0", &path, &expected);
    assert_outcome(&run, 1, "rolled_back", "flipped byte");
    assert_untouched(
        &sc,
        "flipped byte",
        "2.0.0",
        &[&expected, &actual],
        pid,
        "1.0.0",
        &apps_before,
    );
    // A corrupt artifact is a digest mismatch, whatever the damage does to the archive.
    assert_failure_mentions(&run, &[&expected, &actual], "flipped byte");
}

#[test]
fn disk_full_during_extraction_is_a_clean_error() {
    // Declared first, dropped last: the scenario stops the app before the unmount.
    let disk = Tmpfs::mount("28m");
    let mut sc = Scenario::new();
    sc.state = disk.path().join("state");
    let pid = deploy_ok(&sc, "1.0.0");
    let apps_before = apps_tree(&sc);

    // v2 plus 32 MiB, more than the tmpfs has left: random bytes fill it while the artifact is
    // copied into the cache; zeros (a few KiB compressed) while the release is extracted.
    for (version, blob) in [
        ("7.0.0", incompressible(32 * MIB)),
        ("7.0.1", vec![0u8; 32 * MIB]),
    ] {
        let what = format!("disk full with {version}");
        let mut members = sample_members(&sc, "2.0.0");
        members.push(Member::dir("assets", 0o755));
        members.push(Member::file("assets/blob.bin", &blob, 0o644));
        let name = format!("sample-app-{version}");
        let (path, sha) = write_artifact(&sc, "big", &name, &targz(&members));
        let run = deploy_artifact(&sc, version, &path, &sha);
        assert_outcome(&run, 1, "rolled_back", &what);
        let msgs = failure_messages(&run);
        assert!(
            msgs.iter().any(|m| m.contains("No space left on device")
                || m.contains("ENOSPC")
                || m.contains("os error 28")),
            "[{what}] ENOSPC not named: {msgs:#?}"
        );
        assert_untouched(&sc, &what, version, &[&sha], pid, "1.0.0", &apps_before);
    }

    // The space is back: the next deploy works on the same disk.
    deploy_ok(&sc, "2.0.0");
}

#[test]
fn deploys_are_idempotent_check_changes_nothing_and_failures_leave_no_residue() {
    let sc = Scenario::new();
    deploy_ok(&sc, "1.0.0");
    let pid = deploy_ok(&sc, "2.0.0");
    let apps_before = apps_tree(&sc);

    // The same version again: nothing changes, the app keeps running.
    let run = sc.deploy("2.0.0", &[]);
    assert_outcome(&run, 0, "succeeded", "redeploy 2.0.0");
    let changed: Vec<_> = run
        .tasks()
        .into_iter()
        .filter(|(_, _, status)| status == "changed")
        .collect();
    assert!(changed.is_empty(), "changed on a redeploy: {changed:?}");
    assert_eq!(sc.app_pid(), Some(pid), "redeploy restarted the app");
    assert_eq!(apps_tree(&sc), apps_before, "redeploy changed apps/");

    // --check of another version changes nothing on the host. Left out of the comparison: the
    // run's own journal in history/ (a record of the run), the vars file the test writes and
    // the app's log.
    let host = || -> Vec<String> {
        tree_snapshot(sc.path())
            .into_iter()
            .filter(|line| {
                let path = snapshot_path(line);
                !path.starts_with("state/history/")
                    && !path.starts_with("vars-")
                    && path != "app.log"
            })
            .collect()
    };
    let before = host();
    let run = sc.deploy("1.0.0", &["--check"]);
    assert_outcome(&run, 0, "check_only", "--check 1.0.0");
    assert_eq!(host(), before, "--check changed the host");
    assert_eq!(sc.app_pid(), Some(pid), "--check restarted the app");
    assert_eq!(sc.serving().as_deref(), Some("2.0.0"));

    // A failed deploy leaves no residue and the good releases exactly as they were.
    let good_before = good_releases_tree(&sc);
    let public_before = tree_snapshot(&public_dir(&sc));
    let run = sc.deploy("3.0.0", &[]);
    assert_outcome(&run, 1, "rolled_back", "broken 3.0.0");
    let txid = run.summary()["txid"].as_str().unwrap().to_string();
    assert_restored_exactly(
        &sc,
        "broken 3.0.0",
        "3.0.0",
        &txid,
        "2.0.0",
        &good_before,
        &public_before,
    );
    assert_eq!(releases(&sc), ["1.0.0", "2.0.0"]);
}

#[test]
fn release_whose_service_does_not_start_is_rolled_back_exactly() {
    let sc = Scenario::new();
    deploy_ok(&sc, "1.0.0");
    deploy_ok(&sc, "2.0.0");
    let good_before = good_releases_tree(&sc);
    let public_before = tree_snapshot(&public_dir(&sc));

    let mut members = sample_members(&sc, "2.0.0");
    replace(
        &mut members,
        "start.sh",
        b"#!/bin/sh\necho 'v4 refuses to start' >&2\nexit 1\n",
        0o755,
    );
    let (path, sha) = write_artifact(&sc, "broken", "sample-app-4.0.0", &targz(&members));
    let mut vars = sc.vars_with("4.0.0", &path, &sha);
    vars["service_timeout"] = json!(5);
    let run = sc.run(&deploy_playbook(), &vars, &[]);
    assert_outcome(&run, 1, "rolled_back", "4.0.0 does not start");
    // The command manager has no settle time: when the status command runs before start.sh has
    // exited, the start counts as done and the health check is what fails.
    let failed = rescued_task(&run).unwrap_or_default();
    assert!(
        failed.starts_with("start ") || failed.starts_with("health suite "),
        "rolled back because of {failed:?}, not the start"
    );
    let txid = run.summary()["txid"].as_str().unwrap().to_string();
    assert_restored_exactly(
        &sc,
        "4.0.0 does not start",
        "4.0.0",
        &txid,
        "2.0.0",
        &good_before,
        &public_before,
    );
    assert_eq!(releases(&sc), ["1.0.0", "2.0.0"]);
}
