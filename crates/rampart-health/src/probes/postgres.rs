//! The `postgres` probe: connect and `SELECT 1`, then optionally the Flyway schema version, a
//! table count or a query's first value.
//!
//! Inputs: `url` (jdbc:postgresql:// or postgres://), `user`, `password`, then any of
//! `schema_version` (latest Flyway version), `min_tables` (+ `schema`, default public), `query` +
//! `expect`. Output: the value checked (1, the version, the count, the query's answer).

use std::time::Duration;

use serde_json::{Value, json};

use super::{num, s, same};
use crate::Probe;

pub(super) fn postgres(p: &Value, timeout: Duration) -> Probe {
    let Some(url) = s(p, "url") else {
        return Probe::fail(Value::Null, "postgres check without a url");
    };
    let shown = rampart_migrate::config::redact_url(url);
    let parsed = match rampart_migrate::config::parse_jdbc_url(url) {
        Ok(u) => u,
        Err(e) => return Probe::fail(Value::Null, e.to_string()),
    };
    let user = s(p, "user")
        .map(str::to_string)
        .or(parsed.user.clone())
        .unwrap_or_else(|| "postgres".into());
    let mut config = postgres::Config::new();
    config
        .host(&parsed.host)
        .port(parsed.port)
        .user(&user)
        .dbname(parsed.database.as_deref().unwrap_or(&user))
        .application_name("rampart-health")
        .connect_timeout(timeout.max(Duration::from_millis(100)));
    if let Some(pw) = s(p, "password")
        .map(str::to_string)
        .or(parsed.password.clone())
    {
        config.password(pw);
    }
    let mut client = match config.connect(postgres::NoTls) {
        Ok(c) => c,
        Err(e) => {
            let msg = rampart_migrate::error::db_message(&e);
            return Probe::fail(Value::Null, format!("cannot connect to {shown}: {msg}"))
                .with(json!({"error": msg}));
        }
    };
    let fail = |what: &str, e: postgres::Error| {
        let msg = rampart_migrate::error::db_message(&e);
        Probe::fail(Value::Null, format!("{what}: {msg}")).with(json!({"error": msg}))
    };
    if let Err(e) = client.simple_query("SELECT 1") {
        return fail("SELECT 1", e);
    }
    let schema = s(p, "schema").unwrap_or("public");
    if let Some(want) = p.get("schema_version").filter(|v| !v.is_null()) {
        let want = want
            .as_str()
            .map_or_else(|| want.to_string(), str::to_string);
        let mut cfg = rampart_migrate::config::Config {
            url: Some(url.to_string()),
            user: Some(user.clone()),
            password: s(p, "password").map(str::to_string),
            ..Default::default()
        };
        cfg.schemas = vec![schema.to_string()];
        return match rampart_migrate::run::schema_version(&cfg) {
            Ok(found) if found.as_deref() == Some(want.as_str()) => {
                Probe::pass(json!(found), format!("schema version is {want}"))
            }
            Ok(found) => Probe::fail(
                json!(found),
                format!(
                    "schema version is {}, expected {want}",
                    found.as_deref().unwrap_or("<< Empty Schema >>")
                ),
            ),
            Err(e) => Probe::fail(Value::Null, format!("reading the schema version: {e}")),
        };
    }
    if let Some(min) = num(p, "min_tables") {
        return match client.query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1",
            &[&schema],
        ) {
            Ok(row) => {
                let count: i64 = row.get(0);
                if count as f64 >= min {
                    Probe::pass(json!(count), format!("{count} tables in schema {schema}"))
                } else {
                    Probe::fail(
                        json!(count),
                        format!("{count} tables in schema {schema}, expected at least {min}"),
                    )
                }
            }
            Err(e) => fail("counting tables", e),
        };
    }
    if let Some(query) = s(p, "query") {
        return match client.simple_query(query) {
            Ok(messages) => {
                let found = messages.iter().find_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                });
                match p.get("expect").filter(|v| !v.is_null()) {
                    Some(want) if !same(&json!(found), want) => Probe::fail(
                        json!(found),
                        format!("query returned {found:?}, expected {want}"),
                    ),
                    _ => Probe::pass(json!(found), format!("query returned {found:?}")),
                }
            }
            Err(e) => fail("query", e),
        };
    }
    Probe::pass(json!(1), format!("{shown} answers SELECT 1"))
}
