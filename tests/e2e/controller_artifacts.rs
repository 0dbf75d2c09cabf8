//! The controller's artifact store end to end: a real `rampart-controller` with limits in its
//! `[artifacts]` section, uploads over gRPC (TLS, bearer token) with a tonic client and with the
//! `rampart` CLI, and the garbage collection of artifacts nothing references any more, after a
//! deployment and from `rampart-controller gc`.
//!
//! Every refusal is checked for its status code, for a message that names the limit and the
//! setting that raises it, and for leaving nothing behind (no temporary file, nothing under
//! `sha256/`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rampart_proto::v1 as pb;
use rampart_proto::v1::controller_client::ControllerClient;
use rampart_tests::fleet::{Fleet, TOKEN};
use rampart_tests::{block_on, dir_names, sha256_hex};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

type Client =
    ControllerClient<InterceptedService<Channel, fn(Request<()>) -> Result<Request<()>, Status>>>;

fn bearer(mut req: Request<()>) -> Result<Request<()>, Status> {
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("header value"),
    );
    Ok(req)
}

/// A one-host fleet whose controller has `artifacts_toml` as its `[artifacts]` section.
fn fleet_with(artifacts_toml: &str, env_toml: &str) -> Fleet {
    Fleet::start_with_toml(
        1,
        env_toml,
        &format!("[artifacts]\n{artifacts_toml}\n"),
        |_, _| {},
    )
}

/// The controller's artifact directory (`<state_dir>/artifacts`).
fn store_dir(fleet: &Fleet) -> PathBuf {
    fleet.dir.path().join("controller/artifacts")
}

async fn client(fleet: &Fleet) -> Client {
    let addr = &fleet.controller.as_ref().expect("controller running").addr;
    let tls = rampart_rpc::tls::client_ca_only(&[fleet.certs().join("ca.pem")]).unwrap();
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect to the controller");
    ControllerClient::with_interceptor(channel, bearer as fn(_) -> _)
}

/// `UploadArtifact`: a header announcing `announced` bytes (0: unknown), then `data` in pieces
/// of 64 KiB.
async fn upload(
    c: &mut Client,
    name: &str,
    data: &[u8],
    announced: u64,
) -> Result<pb::UploadArtifactResponse, Status> {
    let mut msgs = vec![pb::ArtifactUpload {
        name: name.into(),
        sha256: sha256_hex(data),
        size: announced,
        data: Vec::new(),
    }];
    msgs.extend(data.chunks(64 * 1024).map(|c| pb::ArtifactUpload {
        data: c.to_vec(),
        ..Default::default()
    }));
    tokio::time::timeout(
        Duration::from_secs(60),
        c.upload_artifact(tokio_stream::iter(msgs)),
    )
    .await
    .expect("upload answered within 60 s")
    .map(tonic::Response::into_inner)
}

/// `n` bytes that differ for every `seed`.
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// Sets the modification time of a stored artifact two hours back: older than the default
/// grace period, as an artifact last used long ago.
fn age(path: &Path) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(2 * 3600))
        .unwrap();
}

#[test]
fn an_upload_over_the_per_artifact_limit_is_refused_early_and_leaves_no_file() {
    let fleet = fleet_with("max_artifact_bytes = 1000000\n", "");
    let dir = store_dir(&fleet);
    block_on(async {
        let mut c = client(&fleet).await;
        let big = bytes(2_000_000, 1);

        // Announced over the limit: refused after the header, before any byte is written.
        let e = upload(&mut c, "big.tar.gz", &big, big.len() as u64)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(
            e.message().contains("max_artifact_bytes") && e.message().contains("1000000"),
            "the message names the limit and how to raise it: {}",
            e.message()
        );

        // Size not announced: refused once the bytes received cross the limit; the partly
        // written temporary file is removed.
        let e = upload(&mut c, "big.tar.gz", &big, 0).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(
            e.message().contains("max_artifact_bytes"),
            "{}",
            e.message()
        );
        assert_eq!(dir_names(&dir.join("tmp")), Vec::<String>::new());
        assert!(!dir.join("sha256").join(sha256_hex(&big)).exists());

        // Under the limit: stored.
        let small = bytes(900_000, 2);
        let ok = upload(&mut c, "small.tar.gz", &small, small.len() as u64)
            .await
            .unwrap();
        assert_eq!(ok.size, small.len() as u64);
        assert_eq!(dir_names(&dir.join("sha256")), vec![sha256_hex(&small)]);
        assert_eq!(dir_names(&dir.join("tmp")), Vec::<String>::new());
    });

    // The CLI says which limit refused it and how to raise it (exit 2, nothing deployed).
    let big_file = fleet.dir.path().join("big.tar.gz");
    std::fs::write(&big_file, bytes(1_500_000, 3)).unwrap();
    let r = fleet.cli(&[
        "deploy",
        "--env",
        "prod",
        "--version",
        "1.0.0",
        "--artifact",
        &format!("app={}", big_file.display()),
    ]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("max_artifact_bytes"), "{}", r.stderr);
    assert_eq!(dir_names(&dir.join("tmp")), Vec::<String>::new());
    assert_eq!(fleet.serving(), vec![None]);
}

#[test]
fn the_store_quota_and_the_free_space_floor_refuse_uploads_that_do_not_fit() {
    let fleet = fleet_with("max_artifact_bytes = 1000000\nquota_bytes = 1500000\n", "");
    let dir = store_dir(&fleet);
    block_on(async {
        let mut c = client(&fleet).await;
        let a = bytes(900_000, 4);
        upload(&mut c, "a.tar.gz", &a, a.len() as u64)
            .await
            .unwrap();
        // A second one would take the store to 1.8 MB of its 1.5 MB: refused, announced or not.
        let b = bytes(900_000, 5);
        for announced in [b.len() as u64, 0] {
            let e = upload(&mut c, "b.tar.gz", &b, announced).await.unwrap_err();
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
            assert!(
                e.message().contains("quota_bytes") && e.message().contains("1500000"),
                "{}",
                e.message()
            );
        }
        assert_eq!(dir_names(&dir.join("sha256")), vec![sha256_hex(&a)]);
        assert_eq!(dir_names(&dir.join("tmp")), Vec::<String>::new());
        // The one already stored is found again without counting twice.
        let again = upload(&mut c, "a.tar.gz", &a, a.len() as u64)
            .await
            .unwrap();
        assert!(again.already_present);
    });
    drop(fleet);

    // A filesystem that would keep less free space than min_free_bytes refuses any upload.
    let fleet = fleet_with("min_free_bytes = 1000000000000000\n", "");
    let dir = store_dir(&fleet);
    block_on(async {
        let mut c = client(&fleet).await;
        let a = bytes(10_000, 6);
        let e = upload(&mut c, "a.tar.gz", &a, a.len() as u64)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("min_free_bytes"), "{}", e.message());
        assert_eq!(dir_names(&dir.join("tmp")), Vec::<String>::new());
        assert_eq!(dir_names(&dir.join("sha256")), Vec::<String>::new());
    });
}

#[test]
fn garbage_collection_removes_unreferenced_artifacts_and_keeps_referenced_ones() {
    // Only the newest deployment of the environment is kept in the window: the current
    // release (the last one that succeeded) is kept on its own account.
    let mut fleet = fleet_with("keep_deployments = 1\n", "");
    let dir = store_dir(&fleet);
    let dist = fleet.dist.clone();
    let sha = |v: &str| rampart_tests::deploy::sha256_of(&dist, v);
    for v in ["1.0.0", "2.0.0"] {
        let r = fleet.deploy(v, &[]);
        assert_eq!(r.code, 0, "deploy {v}: {}\n{}", r.stdout, r.stderr);
    }
    let orphan = bytes(50_000, 7);
    let fresh = bytes(50_000, 8);
    block_on(async {
        let mut c = client(&fleet).await;
        upload(&mut c, "orphan.tar.gz", &orphan, orphan.len() as u64)
            .await
            .unwrap();
    });
    // Everything stored so far was last used two hours ago.
    for name in dir_names(&dir.join("sha256")) {
        age(&dir.join("sha256").join(name));
    }
    block_on(async {
        let mut c = client(&fleet).await;
        upload(&mut c, "fresh.tar.gz", &fresh, fresh.len() as u64)
            .await
            .unwrap();
    });

    // The broken 3.0.0 is rolled back; when it finishes, the collection runs.
    let r = fleet.deploy("3.0.0", &[]);
    assert_eq!(r.code, 1, "deploy 3.0.0: {}\n{}", r.stdout, r.stderr);
    let gone = |s: &str| !dir.join("sha256").join(s).exists();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(gone(&sha("1.0.0")) && gone(&sha256_hex(&orphan))) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut expected = vec![sha("2.0.0"), sha("3.0.0"), sha256_hex(&fresh)];
    expected.sort();
    // 1.0.0 is neither in the window nor current, the orphan was never deployed: removed.
    // 2.0.0 is the current release, 3.0.0 the newest deployment's, `fresh` within its grace.
    assert_eq!(dir_names(&dir.join("sha256")), expected);
    assert_eq!(fleet.serving(), vec![Some("2.0.0".to_string())]);

    // `rampart-controller gc` on a stopped controller: the fresh upload, aged, goes too; what
    // is referenced stays; it says what it freed.
    age(&dir.join("sha256").join(sha256_hex(&fresh)));
    fleet.kill_controller();
    let out = std::process::Command::new(rampart_tests::bin("rampart-controller"))
        .arg("--config")
        .arg(&fleet.config)
        .arg("gc")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gc: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&sha256_hex(&fresh)), "{stdout}");
    assert!(stdout.contains("freed 1 artifact"), "{stdout}");
    let mut expected = vec![sha("2.0.0"), sha("3.0.0")];
    expected.sort();
    assert_eq!(dir_names(&dir.join("sha256")), expected);

    // Started again, the controller deploys 1.0.0 once more: the CLI uploads the collected
    // artifact again, as it does any the controller lacks.
    fleet.restart_controller();
    let r = fleet.deploy("1.0.0", &[]);
    assert_eq!(r.code, 0, "deploy 1.0.0 again: {}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("uploaded app ("), "{}", r.stderr);
    assert_eq!(fleet.serving(), vec![Some("1.0.0".to_string())]);
}
