//! Every `chubbyctl` command, run as the real binary against one real local cluster: three
//! `chubbyd` processes on loopback with certificates made by `chubbyctl certs init`, started once
//! for this test binary and shared by every test.
//!
//! Tests that change the cluster as a whole (membership, restore) take the fixture's lock
//! exclusively; the others share it, each under its own path. The `chubbyd` processes run under a
//! small shell watchdog that stops them (and removes the directory) once this process exits.

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tools::dev_cluster::http_get;

const CHUBBYD: &str = env!("CARGO_BIN_EXE_chubbyd");
const CHUBBYCTL: &str = env!("CARGO_BIN_EXE_chubbyctl");
const CLUSTER: &str = "c11c7e57";
/// Node 4 is issued a certificate up front; the membership test adds it.
const NODES: [u64; 3] = [1, 2, 3];
const JOINER: u64 = 4;
/// The longest one chubbyctl run may take before the test calls it hung.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy)]
struct Addresses {
    peer: SocketAddr,
    client: SocketAddr,
    metrics: SocketAddr,
}

struct Fixture {
    dir: PathBuf,
    addresses: BTreeMap<u64, Addresses>,
    /// Shared by tests that touch only their own paths; exclusive for membership and restore.
    lock: RwLock<()>,
    /// The replicas' and the cleanup's watchdog shells: they outlive the tests on purpose (they
    /// stop the replicas and remove the directory once this process exits).
    watchdogs: Mutex<Vec<Child>>,
}

/// What one chubbyctl run did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The last line of stdout as JSON.
    fn json(&self) -> Value {
        let line = self.stdout.lines().last().unwrap_or("");
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("not JSON ({e}): {:?}\nstderr: {}", self.stdout, self.stderr)
        })
    }

    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    fn code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Runs chubbyctl with `args` (no cluster flags added), waiting at most `RUN_TIMEOUT`.
fn chubbyctl_raw(args: &[&str]) -> Run {
    let mut child = Command::new(CHUBBYCTL)
        .args(args)
        .env_remove("CHUBBY_CLUSTER")
        .env_remove("CHUBBY_CERTS")
        .env_remove("CHUBBY_ENDPOINTS")
        .env_remove("CHUBBY_CLIENT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chubbyctl starts");
    // Drain both pipes while waiting: a large output would otherwise block the child.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chubbyctl {args:?} hung for {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

impl Fixture {
    fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap().keep();
        let certs = dir.join("certs");
        let run = chubbyctl_raw(&[
            "certs",
            "init",
            "--dir",
            certs.to_str().unwrap(),
            "--cluster",
            CLUSTER,
            "--nodes",
            "1,2,3,4",
            "--clients",
            "admin,alice",
            "--json",
        ])
        .ok();
        assert_eq!(run.json()["nodes"], serde_json::json!([1, 2, 3, 4]));
        assert!(certs.join("ca.pem").exists() && certs.join("client-alice.pem").exists());
        // Refuses to overwrite the CA: exit 2 (environment).
        chubbyctl_raw(&[
            "certs",
            "init",
            "--dir",
            certs.to_str().unwrap(),
            "--cluster",
            CLUSTER,
        ])
        .code(2);

        let addresses = NODES
            .iter()
            .chain([JOINER].iter())
            .map(|n| {
                let a = Addresses {
                    peer: free_udp(),
                    client: free_udp(),
                    metrics: free_tcp(),
                };
                (*n, a)
            })
            .collect();
        let fixture = Fixture {
            dir,
            addresses,
            lock: RwLock::new(()),
            watchdogs: Mutex::new(Vec::new()),
        };
        fixture.watchdog_cleanup();
        for node in NODES {
            let child = fixture.spawn(node, &NODES, false);
            fixture.keep(child);
        }
        fixture.master();
        fixture
    }

    /// Removes the directory once this test process has exited (after the replicas stopped).
    fn watchdog_cleanup(&self) {
        // CHUBBY_TEST_KEEP=1 keeps the directory (replica logs) for a post-mortem.
        let script = r#"while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; sleep 3; [ -n "$CHUBBY_TEST_KEEP" ] || rm -rf "$2""#;
        let child = Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(std::process::id().to_string())
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.keep(child);
    }

    fn keep(&self, child: Child) {
        self.watchdogs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
    }

    /// Starts `node`'s chubbyd under a watchdog that stops it when this process exits.
    fn spawn(&self, node: u64, members: &[u64], join: bool) -> Child {
        let log = std::fs::File::create(self.dir.join(format!("node-{node}.log"))).unwrap();
        let mut args = vec![
            CHUBBYD.to_string(),
            "--cluster".into(),
            CLUSTER.into(),
            "--node".into(),
            node.to_string(),
            "--data-dir".into(),
            self.data_dir(node).display().to_string(),
            "--certs".into(),
            self.dir.join("certs").display().to_string(),
            "--metrics-listen".into(),
            self.addresses[&node].metrics.to_string(),
        ];
        for n in members.iter().chain(join.then_some(&node)) {
            let a = &self.addresses[n];
            args.push("--member".into());
            args.push(format!("{n}={},{}", a.peer, a.client));
        }
        if join {
            args.push("--join".into());
        }
        let script = r#"parent=$1; shift; "$@" & child=$!; trap 'kill -TERM $child; wait $child; exit' TERM; while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.3; done; kill -TERM "$child" 2>/dev/null; wait "$child""#;
        Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(std::process::id().to_string())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn data_dir(&self, node: u64) -> PathBuf {
        self.dir.join(format!("node-{node}"))
    }

    fn status(&self, node: u64) -> Option<Value> {
        let (code, body) = http_get(self.addresses[&node].metrics, "/status")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    /// Waits for a master under a valid lease; returns it.
    fn master(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for node in NODES {
                if self.status(node).is_some_and(|s| s["lease"] == true) {
                    return node;
                }
            }
            assert!(Instant::now() < deadline, "no master within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn endpoints(&self) -> String {
        NODES
            .iter()
            .map(|n| self.addresses[n].client.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn metrics(&self) -> String {
        NODES
            .iter()
            .map(|n| self.addresses[n].metrics.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// chubbyctl with the cluster flags of this fixture (admin certificate).
    fn ctl(&self, args: &[&str]) -> Run {
        self.ctl_as("admin", args)
    }

    fn ctl_as(&self, client: &str, args: &[&str]) -> Run {
        let certs = self.dir.join("certs");
        let endpoints = self.endpoints();
        let mut all = vec![
            "--cluster",
            CLUSTER,
            "--certs",
            certs.to_str().unwrap(),
            "--endpoints",
            &endpoints,
            "--client",
            client,
        ];
        all.extend_from_slice(args);
        chubbyctl_raw(&all)
    }

    /// Creates `count` files of `bytes` bytes each under `dir` (a new directory), through the
    /// client library (a command line cannot carry 100 KiB arguments).
    fn create_large_files(&self, dir: &str, count: usize, bytes: usize) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let client = chubby_client::Client::connect(self.client_config())
                .await
                .unwrap();
            client
                .create(dir, chubby_client::Create::directory())
                .await
                .unwrap();
            for i in 0..count {
                let contents = vec![b'a' + (i % 26) as u8; bytes];
                client
                    .create(format!("{dir}/{i}"), chubby_client::Create::file(contents))
                    .await
                    .unwrap();
            }
            client.close().await.unwrap();
        });
    }

    fn client_config(&self) -> chubby_client::ClientConfig {
        let replicas = NODES.iter().map(|n| self.addresses[n].client).collect();
        let cluster = u64::from_str_radix(CLUSTER, 16).unwrap();
        chubby_client::ClientConfig::from_cert_dir(
            replicas,
            cluster,
            &self.dir.join("certs"),
            Some("admin"),
        )
        .unwrap()
    }

    /// Commits `count` small writes, one slot each, so that membership changes (which take
    /// effect a window of slots after they are chosen) come into force. Through the client
    /// library: a chubbyctl process per slot would be slow.
    fn advance_slots(&self, count: usize) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let client = chubby_client::Client::connect(self.client_config())
                .await
                .unwrap();
            match client
                .create("/slots", chubby_client::Create::file(Vec::new()))
                .await
            {
                Ok(_) | Err(chubby_client::Error::Op(chubby_client::OpError::AlreadyExists)) => {}
                Err(error) => panic!("create /slots: {error}"),
            }
            for i in 0..count {
                client.set("/slots", vec![i as u8]).await.unwrap();
            }
            client.close().await.unwrap();
        });
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(Fixture::start)
}

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    fixture().lock.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    fixture().lock.write().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn create_get_set_stat_ls_rm_round_trip() {
    let f = fixture();
    let _guard = shared();
    f.ctl(&["create", "/files", "--dir"]).ok();
    let created = f.ctl(&["create", "/files/a", "v1", "--json"]).ok().json();
    assert!(created["instance"].as_u64().unwrap() > 1);
    assert_eq!(f.ctl(&["get", "/files/a"]).ok().stdout, "v1\n");
    let set = f.ctl(&["set", "/files/a", "v2", "--json"]).ok().json();
    assert_eq!(set["content_generation"], 2);
    let got = f.ctl(&["get", "/files/a", "--json"]).ok().json();
    assert_eq!(got["contents"], "v2");
    assert_eq!(got["stat"]["checksum"], set["checksum"]);
    let stale = f.ctl(&["get", "/files/a", "--stale", "--json"]).ok().json();
    assert!(stale["contents"] == "v2" || stale["contents"] == "v1");
    let stat = f.ctl(&["stat", "/files/a", "--json"]).ok().json();
    assert_eq!(stat["stat"]["kind"], "file");
    assert_eq!(stat["stat"]["bytes"], 2);
    f.ctl(&["create", "/files/b", ""]).ok();
    let ls = f.ctl(&["ls", "/files", "--json"]).ok().json();
    assert_eq!(ls["children"], serde_json::json!(["/files/a", "/files/b"]));
    assert_eq!(f.ctl(&["ls", "/files"]).ok().stdout, "/files/a\n/files/b\n");
    f.ctl(&["rm", "/files/a"]).ok();
    // Errors are exit 2 with a message that says what is wrong.
    let missing = f.ctl(&["get", "/files/a"]).code(2);
    assert!(missing.stderr.contains("/files/a"), "{}", missing.stderr);
    let exists = f.ctl(&["create", "/files/b", "x"]).code(2);
    assert!(
        exists.stderr.contains("already exists"),
        "{}",
        exists.stderr
    );
}

#[test]
fn txn_runs_top_or_fop_from_a_json_file() {
    let f = fixture();
    let _guard = shared();
    f.ctl(&["create", "/txn", "old"]).ok();
    let file = f.dir.join("txn.json");
    std::fs::write(
        &file,
        r#"{"guard":[{"Exists":{"path":"/txn"}}],"top":[{"Set":{"path":"/txn","contents":[110,101,119]}}],"fop":[]}"#,
    )
    .unwrap();
    let reply = f
        .ctl(&["txn", file.to_str().unwrap(), "--json"])
        .ok()
        .json();
    assert_eq!(reply["branch"], "Top", "{reply}");
    assert_eq!(f.ctl(&["get", "/txn"]).ok().stdout, "new\n");
    std::fs::write(
        &file,
        r#"{"guard":[{"Absent":{"path":"/txn"}}],"top":[],"fop":[{"Read":{"path":"/txn"}}]}"#,
    )
    .unwrap();
    let reply = f
        .ctl(&["txn", file.to_str().unwrap(), "--json"])
        .ok()
        .json();
    assert_eq!(reply["branch"], "Fop", "{reply}");
    std::fs::write(&file, "not json").unwrap();
    f.ctl(&["txn", file.to_str().unwrap()]).code(2);
}

#[test]
fn lock_runs_the_command_with_a_sequencer_and_releases() {
    let f = fixture();
    let _guard = shared();
    f.ctl(&["create", "/lk", ""]).ok();
    let run = f
        .ctl(&[
            "lock",
            "/lk",
            "--",
            "sh",
            "-c",
            "echo \"seq=$CHUBBY_SEQUENCER\"",
        ])
        .ok();
    assert!(run.stdout.contains("seq=/lk:"), "{}", run.stdout);
    assert!(run.stdout.contains(":exclusive:"), "{}", run.stdout);
    // Released: a try-lock gets it at once; the command's failure is exit 1.
    f.ctl(&["lock", "/lk", "--try", "--shared", "--", "true"])
        .ok();
    f.ctl(&["lock", "/lk", "--", "false"]).code(1);
}

#[test]
fn watch_prints_events_as_they_happen() {
    let f = fixture();
    let _guard = shared();
    f.ctl(&["create", "/watched", "0"]).ok();
    let certs = f.dir.join("certs");
    let endpoints = f.endpoints();
    let mut watch = Command::new(CHUBBYCTL)
        .args(["--cluster", CLUSTER, "--certs", certs.to_str().unwrap()])
        .args(["--endpoints", &endpoints, "--json", "watch", "/watched"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The watch starts asynchronously: write until an event arrives.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut event = None;
    let mut round = 0;
    while event.is_none() && Instant::now() < deadline {
        round += 1;
        f.ctl(&["set", "/watched", &round.to_string()]).ok();
        if let Ok(line) = received.recv_timeout(Duration::from_millis(500)) {
            event = Some(line);
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let line = event.expect("an event within 20 s");
    let event: Value = serde_json::from_str(&line).unwrap();
    assert!(
        line.contains("ContentsChanged") && line.contains("/watched"),
        "{event}"
    );
}

#[test]
fn status_reports_every_replica_and_unreachable_ones_fail() {
    let f = fixture();
    let _guard = shared();
    let status = f
        .ctl(&["status", "--metrics", &f.metrics(), "--json"])
        .ok()
        .json();
    let replicas = status["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3);
    let masters = replicas
        .iter()
        .filter(|r| r["status"]["role"] == "Master")
        .count();
    assert_eq!(masters, 1, "{status}");
    let text = f.ctl(&["status", "--metrics", &f.metrics()]).ok().stdout;
    assert_eq!(text.lines().count(), 3, "{text}");
    let nobody = free_tcp().to_string();
    f.ctl(&["status", "--metrics", &format!("{},{nobody}", f.metrics())])
        .code(1);
}

#[test]
fn check_reports_equal_digests_from_every_voter() {
    let f = fixture();
    let _guard = shared();
    f.ctl(&["create", "/checked", "x"]).ok();
    let report = f.ctl(&["check", "--json"]).ok().json();
    assert_eq!(report["agree"], true, "{report}");
    assert_eq!(report["complete"], true, "{report}");
    let digests = report["digests"].as_object().unwrap();
    assert!(digests.len() >= 3, "{report}");
    let first = digests.values().next().unwrap();
    assert!(digests.values().all(|d| d == first), "{report}");
    let text = f.ctl(&["check"]).ok().stdout;
    assert!(text.contains("every voter agrees"), "{text}");
    // A timeout out of range is refused by the master: exit 1.
    f.ctl(&["check", "--timeout-ms", "0"]).code(1);
}

#[test]
fn admin_commands_need_the_admin_certificate() {
    let f = fixture();
    let _guard = shared();
    let refused = f.ctl_as("alice", &["members", "list", "--json"]).code(1);
    let answer = refused.json();
    assert!(answer["refused"]["NotAdmin"].is_object(), "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("client-alice"),
        "{answer}"
    );
    f.ctl_as("alice", &["check"]).code(1);
    // alice may still use the database.
    f.ctl_as("alice", &["create", "/alice", "hi"]).ok();
    // Usage errors are exit 2.
    assert_eq!(chubbyctl_raw(&["members"]).code, 2);
    assert_eq!(
        chubbyctl_raw(&["members", "list"]).code,
        2,
        "no cluster flags"
    );
    let help = chubbyctl_raw(&["snapshot", "restore", "--help"]).ok();
    assert!(help.stdout.contains("--force"), "{}", help.stdout);
}

#[test]
fn members_add_promote_remove_a_replica_and_verify_its_files() {
    let f = fixture();
    let _guard = exclusive();
    let list = f.ctl(&["members", "list", "--json"]).ok().json();
    let members = list["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{list}");
    assert!(members
        .iter()
        .all(|m| m["voter"] == true && m["reachable"] == true));
    assert!(members.iter().all(|m| m["lag"].as_u64().is_some()));
    let text = f.ctl(&["members", "list"]).ok().stdout;
    assert!(text.contains("voter") && text.contains("applied"), "{text}");

    let joiner = f.addresses[&JOINER];
    let peer = joiner.peer.to_string();
    let client = joiner.client.to_string();
    // --non-voting is required; node ids of members cannot be added again.
    f.ctl(&["members", "add", "4", "--peer", &peer]).code(2);
    f.ctl(&["members", "add", "2", "--peer", &peer, "--non-voting"])
        .code(1);
    let added = f
        .ctl(&[
            "members",
            "add",
            "4",
            "--peer",
            &peer,
            "--non-voting",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(added["node"], 4);
    // Not started yet: the promote rule cannot ask it, so promote refuses.
    let refused = f
        .ctl(&[
            "members",
            "promote",
            "4",
            "--learner-client",
            &client,
            "--json",
        ])
        .code(1)
        .json();
    assert!(
        refused["refused"]["LearnerUnreachable"].is_object(),
        "{refused}"
    );
    f.advance_slots(70);
    let list = f.ctl(&["members", "list", "--json"]).ok().json();
    let four = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node"] == 4)
        .cloned()
        .expect("node 4 listed");
    assert_eq!(four["voter"], false, "{list}");

    let mut learner = f.spawn(JOINER, &NODES, true);
    let deadline = Instant::now() + Duration::from_secs(30);
    let promoted = loop {
        let run = f.ctl(&[
            "members",
            "promote",
            "4",
            "--learner-client",
            &client,
            "--json",
        ]);
        if run.code == 0 {
            break run.json();
        }
        assert!(
            Instant::now() < deadline,
            "node 4 never caught up: {} {}",
            run.stdout,
            run.stderr
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(promoted["action"], "promoted to voter");
    f.advance_slots(70);
    let list = f.ctl(&["members", "list", "--json"]).ok().json();
    let voters = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .count();
    assert_eq!(voters, 4, "{list}");
    assert_eq!(
        f.ctl(&["check", "--json"]).ok().json()["voters"],
        serde_json::json!([1, 2, 3, 4])
    );

    f.ctl(&["members", "remove", "99"]).code(1);
    f.ctl(&["members", "remove", "4", "--json"]).ok();
    f.advance_slots(70);
    let list = f.ctl(&["members", "list", "--json"]).ok().json();
    assert_eq!(list["members"].as_array().unwrap().len(), 3, "{list}");

    // Stop it cleanly and check its files offline: `verify` finds them whole.
    Command::new("kill")
        .args(["-TERM", &learner.id().to_string()])
        .status()
        .unwrap();
    let _ = learner.wait();
    let dir = f.data_dir(JOINER);
    let verified = chubbyctl_raw(&["verify", "--data-dir", dir.to_str().unwrap(), "--json"])
        .ok()
        .json();
    assert_eq!(verified["verdict"], "ok", "{verified}");
    assert_eq!(verified["node"], 4);
    let text = chubbyctl_raw(&["verify", "--data-dir", dir.to_str().unwrap()])
        .ok()
        .stdout;
    assert!(text.contains("ok"), "{text}");
    assert_eq!(
        chubbyctl_raw(&["verify", "--data-dir", "/nonexistent/chubby"]).code,
        2
    );
}

#[test]
fn snapshot_save_and_restore_through_the_log() {
    let f = fixture();
    let _guard = exclusive();
    f.ctl(&["create", "/backup", "--dir"]).ok();
    f.ctl(&["create", "/backup/kept", "precious"]).ok();
    let before = f.ctl(&["stat", "/backup/kept", "--json"]).ok().json();

    let file = f.dir.join("backup.snap");
    let saved = f
        .ctl(&["snapshot", "save", file.to_str().unwrap(), "--json"])
        .ok()
        .json();
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(saved["bytes"], bytes.len());
    assert!(saved["slot"].as_u64().unwrap() > 0);
    assert!(bytes.starts_with(b"CHUBBYDB"));
    assert!(!leftover_temporaries(&f.dir), "no temporary file is left");
    let text = f
        .ctl(&["snapshot", "save", file.to_str().unwrap()])
        .ok()
        .stdout;
    assert!(text.contains("checksum"), "{text}");

    // The database is not empty: refused without --force, nothing changes.
    let refused = f
        .ctl(&["snapshot", "restore", file.to_str().unwrap(), "--json"])
        .code(1)
        .json();
    assert!(refused["refused"]["NotEmpty"].is_object(), "{refused}");
    // A damaged file is caught before anything is sent.
    let damaged = f.dir.join("damaged.snap");
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    std::fs::write(&damaged, &flipped).unwrap();
    let bad = f
        .ctl(&["snapshot", "restore", damaged.to_str().unwrap(), "--force"])
        .code(1);
    assert!(bad.stderr.contains("nothing was sent"), "{}", bad.stderr);
    f.ctl(&["snapshot", "restore", "/nonexistent.snap"]).code(2);

    // Changes after the backup disappear with a forced restore; the backup's nodes come back
    // as new instances (no sequencer of before validates).
    f.ctl(&["set", "/backup/kept", "changed"]).ok();
    f.ctl(&["create", "/backup/later", "x"]).ok();
    let restored = f
        .ctl(&[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--force",
            "--json",
        ])
        .ok()
        .json();
    assert!(
        restored["instance_offset"].as_u64().unwrap() > 0,
        "{restored}"
    );
    assert_eq!(f.ctl(&["get", "/backup/kept"]).ok().stdout, "precious\n");
    f.ctl(&["get", "/backup/later"]).code(2);
    let after = f.ctl(&["stat", "/backup/kept", "--json"]).ok().json();
    assert!(
        after["stat"]["instance"].as_u64() > before["stat"]["instance"].as_u64(),
        "{before} {after}"
    );
    assert_eq!(after["stat"]["checksum"], before["stat"]["checksum"]);
    // Every replica applied the same restore: the digests agree.
    let report = f.ctl(&["check", "--json"]).ok().json();
    assert_eq!(report["agree"], true, "{report}");

    // A snapshot over one log entry: saved in several chunks, but refused for restore, with the
    // limit in the message, before anything is sent.
    f.create_large_files("/big", 6, 200 * 1024);
    let big = f.dir.join("big.snap");
    let saved = f
        .ctl(&["snapshot", "save", big.to_str().unwrap(), "--json"])
        .ok()
        .json();
    assert!(saved["bytes"].as_u64().unwrap() > 1024 * 1024, "{saved}");
    let refused = f
        .ctl(&["snapshot", "restore", big.to_str().unwrap(), "--force"])
        .code(1);
    assert!(
        refused
            .stderr
            .contains("online-restore limit of 1044480 bytes"),
        "{}",
        refused.stderr
    );
    f.ctl(&["get", "/big/5", "--json"]).ok();
}

fn leftover_temporaries(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().contains(".tmp-"))
}
