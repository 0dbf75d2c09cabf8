//! Micro-benchmark of the Flyway checksum of a migration script (~100 KB of SQL), computed for
//! every script on every `migrate` / `migrate info` / validate.
//!
//! Run: `cargo bench -p rampart-migrate --bench checksum`.

use divan::{Bencher, black_box};
use rampart_migrate::checksum;

fn main() {
    divan::main();
}

/// A script of about 100 KB: a table, then batches of inserts, with LF or CRLF line ends.
fn script(line_end: &str) -> String {
    let mut s = String::from("-- V42__seed_orders.sql\nCREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, total numeric(12, 2), note text);\n")
        .replace('\n', line_end);
    let mut i = 0u64;
    while s.len() < 100 * 1024 {
        s.push_str(&format!(
            "INSERT INTO orders (id, customer, total, note) VALUES ({i}, 'customer-{}', {}.{:02}, 'naïve café — ✓');{line_end}",
            i % 977,
            i * 7 % 10_000,
            i % 100
        ));
        i += 1;
    }
    s
}

/// From the file's bytes: strict UTF-8 decoding, then the CRC-32 over its lines.
#[divan::bench(args = ["lf", "crlf"])]
fn of_bytes(bencher: Bencher, line_ends: &str) {
    let bytes = script(if line_ends == "crlf" { "\r\n" } else { "\n" }).into_bytes();
    bencher
        .counter(divan::counter::BytesCount::of_slice(&bytes))
        .bench(|| checksum::of_bytes(black_box(&bytes)).unwrap());
}

/// From text already decoded (after placeholder replacement).
#[divan::bench]
fn of_text(bencher: Bencher) {
    let text = script("\n");
    bencher
        .counter(divan::counter::BytesCount::of_str(&text))
        .bench(|| checksum::of_text(black_box(&text)));
}
