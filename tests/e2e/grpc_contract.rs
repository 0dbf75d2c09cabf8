//! The gRPC contract of `rampart.v1.Agent` (`proto/proto/rampart/v1/agent.proto`), checked against a
//! real `rampart-agent` process on 127.0.0.1 with a tonic client: the event stream of `Run`,
//! `Watch` replay and re-attach, `GetTransaction`, the host lock, the status codes of bad input,
//! and the health service.
//!
//! Every test has its own state dir and its own agent, builds its own small tokio runtime, and
//! bounds every wait (each gRPC call and each stream message) in time.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rampart_proto::v1 as pb;
use rampart_proto::v1::agent_client::AgentClient;
use rampart_proto::v1::transaction_event::Kind;
use rampart_tests::{AgentProc, read_journals};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

/// The longest wait for one gRPC answer or one stream message.
const STEP: Duration = Duration::from_secs(30);
/// The longest wait for a connection to the agent.
const CONNECT: Duration = Duration::from_secs(10);
/// More events than any playbook here produces: a stream longer than this is a runaway.
const MAX_EVENTS: usize = 1000;

type Client = AgentClient<Channel>;
type Events = tonic::Streaming<pb::TransactionEvent>;

/// One agent on its own state dir, with a scratch directory beside it.
struct Host {
    // Declared first so the agent is killed before its directory goes away.
    agent: AgentProc,
    tmp: tempfile::TempDir,
}

impl Host {
    fn start() -> Host {
        let tmp = tempfile::tempdir().expect("temp dir");
        let agent = AgentProc::start(&tmp.path().join("state"));
        Host { agent, tmp }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn state(&self) -> &Path {
        &self.agent.state_dir
    }

    async fn client(&self) -> Client {
        AgentClient::new(channel(&self.agent.addr).await)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn channel(addr: &str) -> Channel {
    assert!(
        addr.starts_with("127.0.0.1:"),
        "agent not on 127.0.0.1: {addr}"
    );
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(CONNECT);
    tokio::time::timeout(CONNECT, ep.connect())
        .await
        .unwrap_or_else(|_| panic!("no connection to the agent at {addr} within {CONNECT:?}"))
        .unwrap_or_else(|e| panic!("cannot connect to the agent at {addr}: {e}"))
}

/// One unary call (or the opening of a stream), bounded by [`STEP`].
async fn call<T>(
    what: &str,
    fut: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
        .map(Response::into_inner)
}

/// The error of a call that must fail with `code`.
fn refused<T: std::fmt::Debug>(what: &str, res: Result<T, Status>, code: Code) -> Status {
    match res {
        Ok(v) => panic!("{what}: expected {code:?}, the call succeeded with {v:?}"),
        Err(s) => {
            assert_eq!(
                s.code(),
                code,
                "{what}: wrong status code (message: {:?})",
                s.message()
            );
            s
        }
    }
}

fn run_req(playbook: &str) -> pb::RunRequest {
    pb::RunRequest {
        playbook: playbook.to_string(),
        playbook_name: "contract.yml".to_string(),
        ..Default::default()
    }
}

async fn start_run(client: &mut Client, req: pb::RunRequest) -> Events {
    call("Run", client.run(req))
        .await
        .unwrap_or_else(|s| panic!("Run refused: {:?}: {}", s.code(), s.message()))
}

/// The next event of a stream; `None` at its end.
async fn next(stream: &mut Events, what: &str) -> Option<pb::TransactionEvent> {
    tokio::time::timeout(STEP, stream.message())
        .await
        .unwrap_or_else(|_| panic!("{what}: no event within {STEP:?}"))
        .unwrap_or_else(|s| panic!("{what}: stream failed: {:?}: {}", s.code(), s.message()))
}

/// Every remaining event of a stream, up to its end.
async fn drain(stream: &mut Events, what: &str) -> Vec<pb::TransactionEvent> {
    let mut out = Vec::new();
    while let Some(ev) = next(stream, what).await {
        out.push(ev);
        assert!(out.len() <= MAX_EVENTS, "{what}: runaway stream");
    }
    out
}

/// Reads events until `stop` matches one (included); fails if the stream ends first.
async fn read_until(
    stream: &mut Events,
    what: &str,
    stop: impl Fn(&pb::TransactionEvent) -> bool,
) -> Vec<pb::TransactionEvent> {
    let mut out = Vec::new();
    loop {
        let ev = next(stream, what)
            .await
            .unwrap_or_else(|| panic!("{what}: stream ended early after {out:#?}"));
        let hit = stop(&ev);
        out.push(ev);
        assert!(out.len() <= MAX_EVENTS, "{what}: runaway stream");
        if hit {
            return out;
        }
    }
}

async fn watch(client: &mut Client, txid: &str, from_seq: u64) -> Result<Events, Status> {
    call(
        "Watch",
        client.watch(pb::WatchRequest {
            txid: txid.to_string(),
            from_seq,
        }),
    )
    .await
}

async fn get_tx(client: &mut Client, txid: &str) -> pb::Transaction {
    call(
        "GetTransaction",
        client.get_transaction(pb::GetTransactionRequest {
            txid: txid.to_string(),
        }),
    )
    .await
    .unwrap_or_else(|s| panic!("GetTransaction {txid}: {:?}: {}", s.code(), s.message()))
}

/// Observers of one transaction's end: see [`spawn_torn_state_poller`].
async fn spawn_torn_state_pollers(
    host: &Host,
    txid: &str,
) -> Vec<tokio::task::JoinHandle<Vec<pb::Transaction>>> {
    let mut pollers = Vec::new();
    for _ in 0..8 {
        pollers.push(spawn_torn_state_poller(
            host.client().await,
            txid.to_string(),
        ));
    }
    pollers
}

/// What the pollers saw, once each has stopped.
async fn join_pollers(
    pollers: Vec<tokio::task::JoinHandle<Vec<pb::Transaction>>>,
) -> Vec<pb::Transaction> {
    let mut torn = Vec::new();
    for p in pollers {
        torn.extend(
            tokio::time::timeout(STEP, p)
                .await
                .expect("a GetTransaction poller did not stop")
                .expect("a GetTransaction poller panicked"),
        );
    }
    torn
}

/// Polls `GetTransaction(txid)` until it says the transaction is no longer running (at most
/// 20 s); returns the answers that said `running` while carrying an outcome or a finish time.
fn spawn_torn_state_poller(
    mut client: Client,
    txid: String,
) -> tokio::task::JoinHandle<Vec<pb::Transaction>> {
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut torn = Vec::new();
        loop {
            let t = get_tx(&mut client, &txid).await;
            if t.running && (t.outcome != 0 || t.finished.is_some()) {
                torn.push(t);
            } else if !t.running || Instant::now() >= deadline {
                return torn;
            }
        }
    })
}

/// `GetTransaction(txid)` once it says the transaction is no longer running (at most 10 s).
async fn settled(client: &mut Client, txid: &str) -> pb::Transaction {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = get_tx(client, txid).await;
        if !t.running || Instant::now() >= deadline {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kind(ev: &pb::TransactionEvent) -> &Kind {
    ev.kind
        .as_ref()
        .unwrap_or_else(|| panic!("event without a kind: {ev:?}"))
}

fn finished(ev: &pb::TransactionEvent) -> Option<&pb::TransactionFinished> {
    match kind(ev) {
        Kind::Finished(f) => Some(f),
        _ => None,
    }
}

fn task_finished(ev: &pb::TransactionEvent) -> Option<&pb::TaskFinished> {
    match kind(ev) {
        Kind::TaskFinished(t) => Some(t),
        _ => None,
    }
}

fn task_started(ev: &pb::TransactionEvent) -> Option<&pb::TaskStarted> {
    match kind(ev) {
        Kind::TaskStarted(t) => Some(t),
        _ => None,
    }
}

fn is_finished(ev: &pb::TransactionEvent) -> bool {
    finished(ev).is_some()
}

/// `seq` runs `from`, `from + 1`, ... without a gap or a repeat.
fn assert_consecutive(events: &[pb::TransactionEvent], from: u64, what: &str) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let want: Vec<u64> = (from..from + events.len() as u64).collect();
    assert_eq!(seqs, want, "{what}: seq numbers");
}

/// The outcome of a finished stream, checking the last event is `finished` and the only one.
fn outcome_of(events: &[pb::TransactionEvent], what: &str) -> pb::TransactionFinished {
    let last = events.last().unwrap_or_else(|| panic!("{what}: no events"));
    let f =
        *finished(last).unwrap_or_else(|| panic!("{what}: last event is not `finished`: {last:?}"));
    assert_eq!(
        events.iter().filter(|e| is_finished(e)).count(),
        1,
        "{what}: exactly one `finished` event"
    );
    f
}

fn outcome(v: i32) -> pb::Outcome {
    pb::Outcome::try_from(v).unwrap_or_else(|_| panic!("unknown outcome {v}"))
}

/// The txid of a stream, from its first (`started`) event.
fn txid_of(events: &[pb::TransactionEvent]) -> String {
    let first = events.first().expect("a first event");
    assert!(
        matches!(kind(first), Kind::Started(_)),
        "first event is not `started`: {first:?}"
    );
    first.txid.clone()
}

/// Journal files (in flight or in history) under a state dir.
fn journal_files(state: &Path) -> Vec<PathBuf> {
    read_journals(state).into_iter().map(|(p, _)| p).collect()
}

const ROLLBACK_PLAYBOOK: &str = "\
- name: deploy with a failing health check
  hosts: localhost
  gather_facts: false
  tasks:
    - name: deploy
      block:
        - name: b1 ok
          debug: msg=b1
        - name: b2 fails
          command: /bin/false
        - name: b3 never
          debug: msg=b3
      rescue:
        - name: r1 restore
          debug: msg=restored
      always:
        - name: a1 always
          debug: msg=always
";

fn pause_playbook(seconds: &str) -> String {
    format!(
        "\
- name: slow deploy
  hosts: localhost
  gather_facts: false
  tasks:
    - name: first
      debug: msg=one
    - name: wait
      pause: seconds={seconds}
    - name: last
      debug: msg=two
"
    )
}

fn touch_playbook(marker: &Path) -> String {
    format!(
        "\
- hosts: localhost
  gather_facts: false
  tasks:
    - name: touch marker
      file: path={} state=touch
",
        marker.display()
    )
}

#[test]
fn run_streams_consecutive_events_from_started_to_a_rolled_back_finish() {
    let host = Host::start();
    runtime().block_on(async {
        let mut client = host.client().await;
        let mut stream = start_run(&mut client, run_req(ROLLBACK_PLAYBOOK)).await;
        let events = drain(&mut stream, "Run").await;

        assert_consecutive(&events, 0, "Run");
        let txid = txid_of(&events);
        assert!(!txid.is_empty(), "the agent chose no txid");
        for e in &events {
            assert_eq!(e.txid, txid, "every event names the transaction: {e:?}");
            assert!(e.time.is_some(), "every event has a time: {e:?}");
        }
        let Kind::Started(s) = kind(&events[0]) else {
            unreachable!("checked by txid_of")
        };
        assert_eq!(s.playbook_name, "contract.yml");
        assert!(!s.check);
        assert_eq!(s.pid, host.agent.pid(), "started.pid is the agent's pid");
        assert!(!s.host.is_empty(), "started.host is empty");
        match kind(&events[1]) {
            Kind::PlayStarted(p) => {
                assert_eq!(p.index, 0);
                assert_eq!(p.name, "deploy with a failing health check");
            }
            other => panic!("second event is not play_started: {other:?}"),
        }

        let f = outcome_of(&events, "Run");
        assert_eq!(outcome(f.outcome), pb::Outcome::RolledBack);
        assert!(!f.recovered);
        assert_eq!(
            f.recap,
            Some(pb::Recap {
                ok: 3,
                changed: 0,
                failed: 0,
                skipped: 0,
                rescued: 1,
                ignored: 0,
            }),
            "recap"
        );

        // Every task_finished follows its task_started and carries section, status and a JSON
        // object as its result.
        let mut tasks = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let Some(t) = task_finished(e) else { continue };
            let st = task_started(&events[i - 1])
                .unwrap_or_else(|| panic!("task_finished {t:?} does not follow its task_started"));
            assert_eq!(
                (&st.path, st.section, &st.name, &st.action),
                (&t.path, t.section, &t.name, &t.action),
                "task_started and task_finished disagree"
            );
            let result: Value = serde_json::from_str(&t.result_json).unwrap_or_else(|err| {
                panic!(
                    "{}: result_json is not JSON: {err}: {:?}",
                    t.name, t.result_json
                )
            });
            assert!(
                result.is_object(),
                "{}: result_json is not a JSON object: {result}",
                t.name
            );
            if t.name == "b2 fails" {
                assert_eq!(result["failed"], Value::Bool(true), "{result}");
                assert_eq!(result["rc"], Value::from(1), "{result}");
            }
            tasks.push((
                t.name.clone(),
                pb::Section::try_from(t.section).expect("a known section"),
                pb::TaskStatus::try_from(t.status).expect("a known status"),
            ));
        }
        let want = [
            ("b1 ok", pb::Section::Block, pb::TaskStatus::Ok),
            ("b2 fails", pb::Section::Block, pb::TaskStatus::Failed),
            ("r1 restore", pb::Section::Rescue, pb::TaskStatus::Ok),
            ("a1 always", pb::Section::Always, pb::TaskStatus::Ok),
        ]
        .map(|(n, s, st)| (n.to_string(), s, st));
        assert_eq!(tasks, want, "task_finished events");
    });
}

#[test]
fn watch_after_the_finish_replays_from_seq_and_refuses_unknown_or_bad_txids() {
    let host = Host::start();
    runtime().block_on(async {
        let mut client = host.client().await;
        let mut stream = start_run(&mut client, run_req(ROLLBACK_PLAYBOOK)).await;
        let events = drain(&mut stream, "Run").await;
        let txid = txid_of(&events);
        assert!(events.len() > 4, "too few events: {events:#?}");
        let last = events.last().unwrap().seq;

        // A fresh connection, as a client that reconnects would have; the transaction is in
        // history by now, so this is a replay.
        let mut other = host.client().await;
        let t = settled(&mut other, &txid).await;
        assert!(!t.running, "{t:?}");
        for k in [0, 1, 3, last, last + 1, last + 100] {
            let mut s = watch(&mut other, &txid, k)
                .await
                .unwrap_or_else(|s| panic!("Watch({txid}, {k}): {:?}: {}", s.code(), s.message()));
            let got = drain(&mut s, "Watch").await;
            let want: Vec<pb::TransactionEvent> =
                events.iter().filter(|e| e.seq >= k).cloned().collect();
            assert_eq!(
                got, want,
                "Watch({txid}, from_seq={k}) against the Run stream"
            );
        }

        let s = refused(
            "Watch of an unknown txid",
            watch(&mut other, "tx-never-ran", 0).await,
            Code::NotFound,
        );
        assert!(s.message().contains("tx-never-ran"), "{}", s.message());
        let s = refused(
            "Watch of txid ../etc",
            watch(&mut other, "../etc", 0).await,
            Code::InvalidArgument,
        );
        assert!(s.message().contains("../etc"), "{}", s.message());
    });
}

#[test]
fn watch_while_running_resumes_without_gaps_after_the_run_client_went_away() {
    let host = Host::start();
    runtime().block_on(async {
        let mut first = host.client().await;
        let mut stream = start_run(&mut first, run_req(&pause_playbook("1"))).await;
        let seen = read_until(&mut stream, "Run", |e| task_finished(e).is_some()).await;
        assert_consecutive(&seen, 0, "Run before leaving");
        let txid = txid_of(&seen);
        let last_seen = seen.last().unwrap().seq;
        // The first client goes away: its stream and its connection.
        drop(stream);
        drop(first);

        let mut second = host.client().await;
        let t = get_tx(&mut second, &txid).await;
        assert!(t.running, "the transaction should still be pausing: {t:?}");
        let mut s = watch(&mut second, &txid, last_seen + 1)
            .await
            .unwrap_or_else(|s| panic!("Watch while running: {:?}: {}", s.code(), s.message()));
        let rest = drain(&mut s, "Watch while running").await;
        assert_consecutive(&rest, last_seen + 1, "Watch while running");
        let f = outcome_of(&rest, "Watch while running");
        assert_eq!(outcome(f.outcome), pb::Outcome::Succeeded);
        let names: Vec<&str> = rest
            .iter()
            .filter_map(task_finished)
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["wait", "last"],
            "tasks finished after the re-attach"
        );

        // Seen + rest is the whole transaction, as a replay from history shows it.
        let mut whole = seen.clone();
        whole.extend(rest.iter().cloned());
        let mut replay = watch(&mut second, &txid, 0).await.expect("replay");
        assert_eq!(drain(&mut replay, "replay").await, whole, "replay from 0");

        // The transaction finished although its first client left; the final state settles
        // within a bounded time (the strict "right after `finished`" check is in the
        // GetTransaction test).
        let t = settled(&mut second, &txid).await;
        assert!(!t.running, "{t:?}");
        assert_eq!(outcome(t.outcome), pb::Outcome::Succeeded, "{t:?}");
    });
}

#[test]
fn get_transaction_reports_running_then_outcome_recap_times_and_last_seq() {
    let host = Host::start();
    runtime().block_on(async {
        let mut client = host.client().await;
        let mut stream = start_run(&mut client, run_req(&pause_playbook("1"))).await;
        let head = read_until(&mut stream, "Run", |e| {
            task_started(e).is_some_and(|t| t.action == "pause")
        })
        .await;
        let txid = txid_of(&head);

        let mut other = host.client().await;
        let t = get_tx(&mut other, &txid).await;
        assert_eq!(t.txid, txid);
        assert_eq!(t.playbook_name, "contract.yml");
        assert!(t.running, "running during the pause: {t:?}");
        assert_eq!(outcome(t.outcome), pb::Outcome::Unspecified, "{t:?}");
        assert!(t.finished.is_none(), "finished set while running: {t:?}");
        assert_eq!(
            t.started, head[0].time,
            "started = the `started` event's time"
        );
        assert_eq!(
            t.last_seq,
            head.last().unwrap().seq,
            "last_seq during the pause (no event comes while it sleeps)"
        );
        assert_eq!(t.recap.map(|r| r.ok), Some(1), "recap so far: {t:?}");
        assert!(!t.recovered);

        // Other observers poll GetTransaction through the end of the transaction: no answer may
        // say both "running" and "finished" (an outcome, or a finish time).
        let pollers = spawn_torn_state_pollers(&host, &txid).await;
        let tail = drain(&mut stream, "Run").await;
        let mut events = head.clone();
        events.extend(tail);
        assert_consecutive(&events, 0, "Run");
        let f = outcome_of(&events, "Run");
        let last = events.last().unwrap();

        // Right after the `finished` event reached the client: the transaction is over.
        let t = get_tx(&mut other, &txid).await;
        assert!(
            !t.running,
            "GetTransaction says running=true after the client received `finished` (seq {}): {t:?}",
            last.seq
        );
        assert_eq!(t.outcome, f.outcome, "{t:?}");
        assert_eq!(outcome(t.outcome), pb::Outcome::Succeeded, "{t:?}");
        assert_eq!(t.recap, f.recap, "recap = the `finished` event's");
        assert_eq!(
            t.recap,
            Some(pb::Recap {
                ok: 3,
                ..Default::default()
            })
        );
        assert_eq!(t.started, events[0].time, "started");
        assert!(t.finished.is_some(), "finished unset: {t:?}");
        assert_eq!(
            t.finished, last.time,
            "finished = the `finished` event's time"
        );
        assert_eq!(t.last_seq, last.seq, "last_seq = the last event's seq");
        assert!(!t.recovered);
        let mut torn = join_pollers(pollers).await;
        // The window is short: watch a few more transactions end the same way.
        for _ in 0..4 {
            let mut s = start_run(&mut client, run_req(&pause_playbook("0.2"))).await;
            let head = read_until(&mut s, "Run", |e| {
                task_started(e).is_some_and(|t| t.action == "pause")
            })
            .await;
            let pollers = spawn_torn_state_pollers(&host, &txid_of(&head)).await;
            let rest = drain(&mut s, "Run").await;
            assert_eq!(
                outcome(outcome_of(&rest, "Run").outcome),
                pb::Outcome::Succeeded
            );
            torn.extend(join_pollers(pollers).await);
        }
        assert!(
            torn.is_empty(),
            "GetTransaction answered running=true for a transaction that had finished \
             (outcome or finish time set) {} time(s), first: {:?}",
            torn.len(),
            torn.first()
        );

        let s = refused(
            "GetTransaction of an unknown txid",
            call(
                "GetTransaction",
                other.get_transaction(pb::GetTransactionRequest {
                    txid: "tx-never-ran".into(),
                }),
            )
            .await,
            Code::NotFound,
        );
        assert!(s.message().contains("tx-never-ran"), "{}", s.message());
    });
}

#[test]
fn host_lock_refuses_a_second_run_naming_the_holder_then_lets_it_run() {
    let host = Host::start();
    runtime().block_on(async {
        let mut a_client = host.client().await;
        let mut a = start_run(&mut a_client, run_req(&pause_playbook("3"))).await;
        let a_head = read_until(&mut a, "Run A", |e| {
            task_started(e).is_some_and(|t| t.action == "pause")
        })
        .await;
        let a_txid = txid_of(&a_head);

        let mut b_client = host.client().await;
        let b_req = pb::RunRequest {
            txid: "tx-b-waits".into(),
            lock_timeout_ms: 300,
            ..run_req("- hosts: localhost\n  gather_facts: false\n  tasks:\n    - debug: msg=b\n")
        };
        let t0 = Instant::now();
        let res = call("Run B", b_client.run(b_req.clone())).await;
        let waited = t0.elapsed();
        let s = refused(
            "Run B while A holds the lock",
            res,
            Code::FailedPrecondition,
        );
        assert!(
            s.message().contains(&a_txid),
            "the refusal should name the holder {a_txid}: {}",
            s.message()
        );
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_millis(2500),
            "Run B should wait about lock_timeout_ms=300 before giving up, waited {waited:?}"
        );
        // The refused run left nothing behind.
        refused(
            "Watch of the refused B",
            watch(&mut b_client, "tx-b-waits", 0).await,
            Code::NotFound,
        );

        let a_tail = drain(&mut a, "Run A").await;
        let a_outcome = outcome_of(&a_tail, "Run A");
        assert_eq!(outcome(a_outcome.outcome), pb::Outcome::Succeeded);

        let b_req = pb::RunRequest {
            lock_timeout_ms: 10_000,
            ..b_req
        };
        let mut b = start_run(&mut b_client, b_req).await;
        let b_events = drain(&mut b, "Run B after A").await;
        assert_consecutive(&b_events, 0, "Run B after A");
        assert_eq!(txid_of(&b_events), "tx-b-waits");
        let f = outcome_of(&b_events, "Run B after A");
        assert_eq!(outcome(f.outcome), pb::Outcome::Succeeded);
    });
}

/// A client that gives up on `Run` while the agent waits for the host lock must not leave a
/// transaction begun and never run: once the lock is taken and the journal begun, it runs to
/// its end under the live agent (before, the dropped call dropped the prepared transaction: a
/// journal with only `begin` stayed in flight until the agent's next start).
#[test]
fn a_run_whose_client_gave_up_while_it_waited_for_the_lock_still_runs_to_its_end() {
    let host = Host::start();
    runtime().block_on(async {
        let mut a_client = host.client().await;
        let mut a = start_run(&mut a_client, run_req(&pause_playbook("2"))).await;
        read_until(&mut a, "Run A", |e| {
            task_started(e).is_some_and(|t| t.action == "pause")
        })
        .await;
        let mut b_client = host.client().await;
        let b_req = pb::RunRequest {
            txid: "tx-b-gave-up".into(),
            lock_timeout_ms: 20_000,
            ..run_req("- hosts: localhost\n  gather_facts: false\n  tasks:\n    - debug: msg=b\n")
        };
        // The client goes away while B waits for A's lock (its call is dropped).
        let gave_up = tokio::time::timeout(Duration::from_millis(500), b_client.run(b_req)).await;
        assert!(
            gave_up.is_err(),
            "Run B should still be waiting for the lock"
        );
        let a_end = outcome_of(&drain(&mut a, "Run A").await, "Run A");
        assert_eq!(outcome(a_end.outcome), pb::Outcome::Succeeded);
        // B takes the lock once A ends, and runs to its end although nobody listens.
        let deadline = Instant::now() + Duration::from_secs(20);
        let b = loop {
            let t = call(
                "GetTransaction",
                b_client.get_transaction(pb::GetTransactionRequest {
                    txid: "tx-b-gave-up".into(),
                }),
            )
            .await;
            if let Ok(t) = &t
                && !t.running
            {
                break t.clone();
            }
            assert!(
                Instant::now() < deadline,
                "tx-b-gave-up did not finish within 20 s: {t:?}; journals: {:?}",
                journal_files(host.state())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(outcome(b.outcome), pb::Outcome::Succeeded, "{b:?}");
        let in_flight = rampart_tests::dir_names(&host.state().join("journal"));
        assert!(
            in_flight.is_empty(),
            "no journal may stay in flight: {in_flight:?}"
        );
    });
}

#[test]
fn bad_input_is_refused_with_its_code_before_anything_runs() {
    let host = Host::start();
    let marker = host.dir().join("marker");
    runtime().block_on(async {
        let mut client = host.client().await;

        // An unknown module after a task that would touch the marker.
        let bad = format!(
            "{}    - name: bogus\n      bogus_module: x=1\n",
            touch_playbook(&marker)
        );
        assert_eq!(bad.lines().nth(6), Some("      bogus_module: x=1"));
        let req = pb::RunRequest {
            playbook_name: "bad.yml".into(),
            ..run_req(&bad)
        };
        let s = refused(
            "unknown module",
            call("Run", client.run(req)).await,
            Code::InvalidArgument,
        );
        assert!(
            s.message().contains("bad.yml:7:7"),
            "the message should carry file:line:column (bad.yml:7:7): {}",
            s.message()
        );
        assert!(s.message().contains("bogus_module"), "{}", s.message());
        assert!(!marker.exists(), "the task before the bad one ran");

        // vars_json that is not an object.
        let req = pb::RunRequest {
            vars_json: "[1, 2]".into(),
            ..run_req(&touch_playbook(&marker))
        };
        let s = refused(
            "vars_json array",
            call("Run", client.run(req)).await,
            Code::InvalidArgument,
        );
        assert!(s.message().contains("vars_json"), "{}", s.message());
        assert!(!marker.exists(), "a run with bad vars_json ran");

        // An inventory view that does not hold together, or a play pattern that cannot be
        // evaluated against it: refused before anything runs.
        for (what, inventory_json, expect) in [
            ("not JSON", "{".to_string(), "inventory_json"),
            (
                "host missing from all",
                r#"{"host":"a","groups":{"all":["b"]},"hostvars":{"a":{},"b":{}}}"#.to_string(),
                "not in the group `all`",
            ),
            (
                "group names a host without vars",
                r#"{"host":"a","groups":{"all":["a","zz"]},"hostvars":{"a":{}}}"#.to_string(),
                "\"zz\"",
            ),
            (
                "too large",
                format!(
                    r#"{{"host":"a","groups":{{"all":["a"]}},"hostvars":{{"a":{{"x":"{}"}}}}}}"#,
                    "x".repeat(9 << 20)
                ),
                "at most",
            ),
        ] {
            let req = pb::RunRequest {
                inventory_json,
                ..run_req(&touch_playbook(&marker))
            };
            let s = refused(
                what,
                call("Run", client.run(req)).await,
                Code::InvalidArgument,
            );
            assert!(s.message().contains(expect), "{what}: {}", s.message());
        }
        let req = pb::RunRequest {
            inventory_json: r#"{"host":"a","groups":{"all":["a"]},"hostvars":{"a":{}}}"#.into(),
            ..run_req(&touch_playbook(&marker).replace("hosts: localhost", "hosts: \"~(\""))
        };
        let s = refused(
            "bad play pattern",
            call("Run", client.run(req)).await,
            Code::InvalidArgument,
        );
        assert!(s.message().contains("~("), "{}", s.message());
        assert!(!marker.exists(), "a run with a bad inventory view ran");

        // A txid that is not a file name.
        let req = pb::RunRequest {
            txid: "../etc".into(),
            ..run_req(&touch_playbook(&marker))
        };
        let s = refused(
            "txid ../etc",
            call("Run", client.run(req)).await,
            Code::InvalidArgument,
        );
        assert!(s.message().contains("../etc"), "{}", s.message());
        assert!(!marker.exists(), "a run with txid ../etc ran");
        assert_eq!(
            journal_files(host.state()),
            Vec::<PathBuf>::new(),
            "refused runs journaled something"
        );

        // A reused txid.
        let first = pb::RunRequest {
            txid: "tx-reused".into(),
            ..run_req(
                "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - debug: msg=first\n",
            )
        };
        let mut s = start_run(&mut client, first).await;
        let events = drain(&mut s, "first run").await;
        assert_eq!(txid_of(&events), "tx-reused");
        let again = pb::RunRequest {
            txid: "tx-reused".into(),
            ..run_req(&touch_playbook(&marker))
        };
        let s = refused(
            "reused txid",
            call("Run", client.run(again)).await,
            Code::AlreadyExists,
        );
        assert!(s.message().contains("tx-reused"), "{}", s.message());
        assert!(!marker.exists(), "the run with a reused txid ran");
        let mut replay = watch(&mut client, "tx-reused", 0).await.expect("replay");
        assert_eq!(
            drain(&mut replay, "replay").await,
            events,
            "the first transaction's history changed"
        );
    });
}

#[test]
fn reusing_the_txid_of_a_running_transaction_is_already_exists() {
    // agent.proto, RunRequest.txid: "Reusing the id of a running or finished transaction is
    // refused with ALREADY_EXISTS."
    let host = Host::start();
    let marker = host.dir().join("marker");
    runtime().block_on(async {
        let mut client = host.client().await;
        let req = pb::RunRequest {
            txid: "tx-running".into(),
            ..run_req(&pause_playbook("2"))
        };
        let mut a = start_run(&mut client, req).await;
        read_until(&mut a, "Run A", |e| {
            task_started(e).is_some_and(|t| t.action == "pause")
        })
        .await;

        let mut other = host.client().await;
        let again = pb::RunRequest {
            txid: "tx-running".into(),
            lock_timeout_ms: 300,
            ..run_req(&touch_playbook(&marker))
        };
        let res = call("Run with the running txid", other.run(again)).await;
        let s = refused(
            "Run reusing the txid of a running transaction",
            res,
            Code::AlreadyExists,
        );
        assert!(s.message().contains("tx-running"), "{}", s.message());
        assert!(!marker.exists(), "the run with a reused txid ran");
        let rest = drain(&mut a, "Run A").await;
        assert_eq!(
            outcome(outcome_of(&rest, "Run A").outcome),
            pb::Outcome::Succeeded
        );
    });
}

#[test]
fn health_check_serves_the_server_and_the_agent_service() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let host = Host::start();
    runtime().block_on(async {
        let mut health = HealthClient::new(channel(&host.agent.addr).await);
        for service in ["", "rampart.v1.Agent"] {
            let r = call(
                "Health/Check",
                health.check(HealthCheckRequest {
                    service: service.into(),
                }),
            )
            .await
            .unwrap_or_else(|s| {
                panic!("Health/Check({service:?}): {:?}: {}", s.code(), s.message())
            });
            assert_eq!(
                ServingStatus::try_from(r.status),
                Ok(ServingStatus::Serving),
                "Health/Check({service:?})"
            );
        }
    });
}
