//! A throwaway PostgreSQL cluster for one test: `initdb` and `pg_ctl` (from `/usr/local/bin`,
//! else Debian's `/usr/lib/postgresql/<v>/bin`), run as the `postgres` user via `runuser` when
//! the tests run as root, data in a temp dir, password (SCRAM) logins on a free 127.0.0.1
//! port, stopped (`pg_ctl stop`, by its own data dir) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The superuser's password in every test cluster.
pub const PASSWORD: &str = "rampart-test-pw";

/// A running cluster.
#[derive(Debug)]
pub struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Held while [`Pg::down_for`] has the server stopped: outages never overlap.
    outage: std::sync::Mutex<()>,
}

fn server_bin_dir() -> PathBuf {
    if Path::new("/usr/local/bin/initdb").exists() {
        return PathBuf::from("/usr/local/bin");
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect(
        "no PostgreSQL server binaries (initdb): the README's test command installs them; or apt-get install postgresql",
    )
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs a server program as the `postgres` user when we are root (initdb refuses root).
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The server options of a test cluster: its port, socket dir and small limits.
fn server_options(dir: &Path, port: u16) -> String {
    format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=60 -c shared_buffers=16MB",
        dir.display()
    )
}

impl Pg {
    /// Creates and starts a cluster; panics with the server's log when it cannot.
    pub fn start() -> Pg {
        let bin = server_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("rampart-pg-")
            .tempdir_in("/var/tmp")
            .expect("temp dir for the cluster");
        if is_root() {
            let pg = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .expect("a postgres user (the postgresql package creates it)");
            nix::unistd::chown(dir.path(), Some(pg.uid), Some(pg.gid))
                .expect("chown the cluster dir");
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if is_root() {
            let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            nix::unistd::chown(&pwfile, Some(pg.uid), Some(pg.gid)).unwrap();
        }
        let data = dir.path().join("data");
        check(
            as_postgres(&bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-E", "UTF8", "--no-locale", "--no-sync"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg(format!("--pwfile={}", pwfile.display()))
                .output()
                .expect("run initdb"),
            "initdb",
        );
        // A port picked free can be taken before the server binds it: try a few.
        for attempt in 0..5 {
            let port = crate::deploy::free_port();
            let out = as_postgres(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("server.log"))
                .arg("-o")
                .arg(server_options(dir.path(), port))
                .args(["-w", "-t", "60", "start"])
                .output()
                .expect("run pg_ctl");
            if out.status.success() {
                return Pg {
                    dir,
                    bin,
                    port,
                    outage: std::sync::Mutex::new(()),
                };
            }
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            assert!(
                attempt < 4 && log.contains("could not bind"),
                "pg_ctl start failed: {}\n{log}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        unreachable!("the loop returns or panics")
    }

    /// The libpq-style URL (`postgresql://…`, the superuser's password in it) of a database of
    /// this cluster, as the controller's `[store] url` takes it.
    pub fn store_url(&self, database: &str) -> String {
        format!(
            "postgresql://postgres:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// The JDBC URL of a database of this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("jdbc:postgresql://127.0.0.1:{}/{database}", self.port)
    }

    /// The client tools' environment for a database of this cluster.
    pub fn env(&self, database: &str) -> Vec<(&'static str, String)> {
        vec![
            ("PGHOST", "127.0.0.1".into()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", "postgres".into()),
            ("PGPASSWORD", PASSWORD.into()),
            ("PGDATABASE", database.into()),
        ]
    }

    /// Runs SQL with psql (stops at the first error) and returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = self.try_psql(database, sql);
        let out = check(out, &format!("psql {sql}"));
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// Runs SQL with psql and returns the whole output, success or not.
    pub fn try_psql(&self, database: &str, sql: &str) -> Output {
        Command::new("psql")
            .envs(self.env(database))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql")
    }

    /// Creates a database.
    pub fn create_db(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    /// `pg_dump --schema-only` of a database, without the per-run `\restrict` key lines.
    pub fn schema_dump(&self, database: &str) -> String {
        let out = check(
            Command::new("pg_dump")
                .envs(self.env(database))
                .args(["--schema-only", "--no-password"])
                .output()
                .expect("run pg_dump"),
            "pg_dump --schema-only",
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The rows of a table as text, ordered by every column.
    pub fn rows(&self, database: &str, table: &str) -> String {
        self.psql(
            database,
            &format!("SELECT t::text FROM {table} t ORDER BY 1"),
        )
    }

    /// Applies the Flyway fixtures (`tests/fixtures/flyway/ok`) to `database` with
    /// `rampart migrate migrate` and `extra` flags (e.g. `-target=1.1`); panics on failure.
    pub fn migrate_fixtures(&self, database: &str, extra: &[&str]) {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/flyway/ok");
        let out = Command::new(crate::bin("rampart"))
            .args([
                "migrate",
                "migrate",
                "-user=postgres",
                "-placeholders.app_name=shop",
            ])
            .arg(format!("-password={PASSWORD}"))
            .arg(format!("-url={}", self.url(database)))
            .arg(format!("-locations=filesystem:{}", fixtures.display()))
            .args(extra)
            .output()
            .expect("run rampart migrate");
        check(out, "rampart migrate migrate (fixtures)");
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`): every session is cut as by a crash,
    /// as a fault test wants. [`Pg::start_again`] brings it back on the same port and data.
    pub fn stop_immediate(&self) {
        check(
            as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .output()
                .expect("run pg_ctl stop"),
            "pg_ctl stop -m immediate",
        );
    }

    /// Starts a stopped server again on its port (crash recovery runs first, as after a crash).
    pub fn start_again(&self) {
        check(
            as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .arg("-l")
                .arg(self.dir.path().join("server.log"))
                .arg("-o")
                .arg(server_options(self.dir.path(), self.port))
                .args(["-w", "-t", "60", "start"])
                .output()
                .expect("run pg_ctl start"),
            "pg_ctl start (again)",
        );
    }

    /// An outage: the server stopped at once, and started again after `d`. Two outages asked
    /// for at once (a fault test's overlapping draws) run one after the other, never a stop of a
    /// stopped server.
    pub fn down_for(&self, d: std::time::Duration) {
        let _one_at_a_time = self.outage.lock().unwrap_or_else(|p| p.into_inner());
        self.stop_immediate();
        std::thread::sleep(d);
        self.start_again();
    }

    /// The cluster's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output();
    }
}
