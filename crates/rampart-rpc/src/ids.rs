//! Ids that name files and records: transaction ids (`tx-…`, the journal's file name on a host)
//! and deployment ids (`d-…`, the controller's record). Both are UTC time to the second plus 32
//! random bits, so they sort by time and two made in the same second differ.

/// A fresh transaction id: `tx-<UTC yyyymmddThhmmssZ>-<8 hex>`.
pub fn new_txid() -> String {
    new_id("tx")
}

/// A fresh deployment id: `d-<UTC yyyymmddThhmmssZ>-<8 hex>`.
pub fn new_deployment_id() -> String {
    new_id("d")
}

fn new_id(prefix: &str) -> String {
    let mut buf = [0u8; 4];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .map(|()| u32::from_le_bytes(buf))
        .unwrap_or_else(|_| std::process::id() ^ chrono::Utc::now().timestamp_subsec_nanos());
    format!(
        "{prefix}-{}-{random:08x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_prefix_time_and_randomness() {
        let a = new_txid();
        let b = new_txid();
        assert!(
            a.starts_with("tx-") && a.len() == "tx-20260101T000000Z-0123abcd".len(),
            "{a}"
        );
        assert_ne!(a, b);
        let d = new_deployment_id();
        assert!(
            d.starts_with("d-") && d.len() == "d-20260101T000000Z-0123abcd".len(),
            "{d}"
        );
        assert!(d.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
