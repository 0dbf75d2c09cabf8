//! Micro-benchmark of safe extraction: a release artifact of about 1 MB (`.tar.gz`, built in
//! memory) verified (SHA-256) and unpacked into a fresh staging directory, as `stage` does.
//!
//! Run: `cargo bench -p rampart-host --bench extract`.

use std::io::Write;

use divan::{Bencher, black_box};
use flate2::Compression;
use flate2::write::GzEncoder;
use rampart_host::digest::sha256_hex;
use rampart_host::extract::{Limits, extract};
use tar::{Builder, EntryType, Header};

fn main() {
    divan::main();
}

/// Files in the archive and the size of each: 64 × 16 KiB = 1 MiB of content.
const FILES: usize = 64;
const FILE_BYTES: usize = 16 * 1024;

/// Bytes that do not compress (xorshift), so the `.tar.gz` itself is about 1 MB.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    // Odd and distinct per seed (xorshift must not start at 0; equal files would compress).
    let mut x = seed * 2 + 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A release tree: `bin/`, `lib/` and `db/migration/` with 64 files spread over them.
fn archive() -> Vec<u8> {
    let mut b = Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for dir in ["bin/", "lib/", "db/", "db/migration/"] {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, dir, &[][..]).unwrap();
    }
    for i in 0..FILES {
        let (dir, mode) = match i % 4 {
            0 => ("bin", 0o755),
            1 | 2 => ("lib", 0o644),
            _ => ("db/migration", 0o644),
        };
        let data = noise(i as u64, FILE_BYTES);
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, format!("{dir}/file-{i:02}"), &data[..])
            .unwrap();
    }
    let mut gz = b.into_inner().unwrap();
    gz.flush().unwrap();
    gz.finish().unwrap()
}

/// Verify + extract into a staging directory that does not exist yet (each iteration gets its
/// own temp dir, made and removed outside the timing).
#[divan::bench(sample_count = 50, sample_size = 4)]
fn extract_1mb(bencher: Bencher) {
    let data = archive();
    assert!(
        data.len() > 1_000_000,
        "the archive is {} bytes",
        data.len()
    );
    let sha = sha256_hex(&data);
    bencher
        .counter(divan::counter::BytesCount::of_slice(&data))
        .with_inputs(|| tempfile::tempdir().unwrap())
        .bench_local_refs(|dir| {
            let got = extract(
                black_box(&data[..]),
                &sha,
                &dir.path().join("stage"),
                Limits::default(),
            )
            .unwrap();
            assert_eq!(got.entries, (FILES + 4) as u64);
            got
        });
}
