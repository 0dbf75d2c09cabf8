//! `HasArtifact` / `PutArtifact` against a real agent over gRPC on 127.0.0.1: the digest is
//! verified while streaming, a known digest is skipped, and a bad upload leaves nothing behind.

use std::time::Duration;

use rampart_proto::v1 as pb;
use rampart_proto::v1::agent_client::AgentClient;
use rampart_tests::{AgentProc, block_on, dir_names, sha256_hex};
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

fn chunks(digest: &str, size: u64, data: &[u8], piece: usize) -> Vec<pb::ArtifactChunk> {
    data.chunks(piece)
        .enumerate()
        .map(|(i, c)| pb::ArtifactChunk {
            sha256: if i == 0 {
                digest.to_string()
            } else {
                String::new()
            },
            size: if i == 0 { size } else { 0 },
            data: c.to_vec(),
        })
        .collect()
}

/// `PutArtifact` of `data` in pieces of `piece` bytes, the first declaring `digest` and `size`.
async fn upload(
    c: &mut AgentClient<Channel>,
    digest: &str,
    size: u64,
    data: &[u8],
    piece: usize,
) -> Result<pb::PutArtifactResponse, Status> {
    c.put_artifact(tokio_stream::iter(chunks(digest, size, data, piece)))
        .await
        .map(Response::into_inner)
}

/// `HasArtifact` for `digest`.
async fn lookup(
    c: &mut AgentClient<Channel>,
    digest: &str,
) -> Result<pb::HasArtifactResponse, Status> {
    c.has_artifact(pb::HasArtifactRequest {
        sha256: digest.to_string(),
    })
    .await
    .map(Response::into_inner)
}

#[test]
fn upload_is_verified_while_streaming_and_known_digests_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let agent = AgentProc::start(&state);
    block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", agent.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await
            .expect("connect to the agent");
        let mut c = AgentClient::new(ch);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let digest = sha256_hex(&data);

        let has = lookup(&mut c, &digest).await.unwrap();
        assert!(!has.present);

        // A wrong digest: refused, naming both digests, nothing kept.
        let wrong = "0".repeat(64);
        let err = upload(&mut c, &wrong, data.len() as u64, &data, 65_536)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(&wrong) && err.message().contains(&digest),
            "{}",
            err.message()
        );
        assert!(dir_names(&state.join("artifacts/sha256")).is_empty());
        assert!(
            dir_names(&state.join("artifacts/tmp")).is_empty(),
            "partial upload left behind"
        );

        // The right digest, in five chunks.
        let put = upload(&mut c, &digest, data.len() as u64, &data, 65_536)
            .await
            .unwrap();
        assert_eq!(put.sha256, digest);
        assert_eq!(put.size, data.len() as u64);
        assert!(!put.already_present);
        let stored = std::fs::read(state.join("artifacts/sha256").join(&digest)).unwrap();
        assert_eq!(stored, data);

        // A lookup that finds the artifact marks it as just used, so a prune in another
        // transaction (which spares artifacts newer than its start) keeps it for the `Run`
        // the lookup precedes.
        let cached = state.join("artifacts/sha256").join(&digest);
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&cached)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        let has = lookup(&mut c, &digest).await.unwrap();
        assert!(has.present);
        assert_eq!(has.size, data.len() as u64);
        let touched = std::fs::metadata(&cached).unwrap().modified().unwrap();
        assert!(
            touched > hour_ago + Duration::from_secs(3000),
            "HasArtifact left the artifact's mtime an hour old"
        );

        // Known digest: skipped after the first chunk.
        let again = upload(&mut c, &digest, data.len() as u64, &data[..10], 10)
            .await
            .unwrap();
        assert!(again.already_present);

        // A size that does not match the first chunk's declaration is refused.
        let other: Vec<u8> = b"short".to_vec();
        let err = upload(&mut c, &sha256_hex(&other), 999, &other, 2)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("declared 999"), "{}", err.message());

        // A digest that is not hex never becomes a file name.
        let err = lookup(&mut c, "../../etc/passwd").await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    });
}
