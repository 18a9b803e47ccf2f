//! Exactly once across crashes: the same persistent queries run once
//! straight through and once killed (SIGKILL of the child process) at
//! random moments and restarted; their output topics hold the same rows,
//! none twice, none missing.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_engine::{Durability, Engine};

const CHILD: &str = env!("CARGO_BIN_EXE_crash_child");
const SINKS: &[&str] = &["crash_q0", "crash_q5", "crash_q7", "crash_q12"];

fn spawn(dir: &std::path::Path) -> Child {
    Command::new(CHILD)
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("child starts")
}

/// Runs the child until it says it is done.
fn run_to_end(dir: &std::path::Path) {
    let output = spawn(dir).wait_with_output().expect("child runs");
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("DONE"),
        "child failed: {:?} {}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
}

/// A small pseudo-random sequence (xorshift), seeded and printed so that a
/// failure can be replayed.
struct Delays(u64);

impl Delays {
    fn next_ms(&mut self, max: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % max
    }
}

async fn output_rows(dir: &std::path::Path) -> Vec<(String, Vec<String>)> {
    let engine = Engine::builder(dir)
        .durability(Durability::Os)
        .open()
        .await
        .expect("engine opens");
    let mut all = Vec::new();
    for sink in SINKS {
        let columns: Vec<String> = engine
            .sql()
            .catalog()
            .require_stream(sink)
            .expect("output stream")
            .value_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let batches = engine
            .query(&format!("SELECT {} FROM {sink}", columns.join(", ")))
            .await
            .expect("output stream");
        let mut rows = sluice_tests::row_lines(&batches);
        rows.sort();
        all.push((sink.to_string(), rows));
    }
    engine.shutdown().await.expect("shutdown");
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_resumed_queries_write_what_a_straight_run_writes() {
    let straight = tempfile::tempdir().expect("temp dir");
    let crashed = tempfile::tempdir().expect("temp dir");
    let straight_path = straight.path().to_path_buf();
    tokio::task::spawn_blocking(move || run_to_end(&straight_path))
        .await
        .expect("straight run");

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    println!("kill delays seeded with {seed}");
    let crashed_path = crashed.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut delays = Delays(seed);
        let mut kills = 0;
        // Each run is killed at a random moment, most while loading and
        // triggering; a run that finishes first is simply done.
        for _ in 0..8 {
            let mut child = spawn(&crashed_path);
            let delay = Duration::from_millis(30 + delays.next_ms(700));
            let started = Instant::now();
            while started.elapsed() < delay && child.try_wait().expect("child status").is_none() {
                std::thread::sleep(Duration::from_millis(2));
            }
            if child.try_wait().expect("child status").is_none() {
                child.kill().expect("SIGKILL");
                kills += 1;
            }
            let _ = child.wait();
        }
        println!("killed the child {kills} times");
        assert!(
            kills > 0,
            "the child was never killed: the test checked nothing"
        );
        run_to_end(&crashed_path);
    })
    .await
    .expect("crashed run");

    let want = output_rows(straight.path()).await;
    let got = output_rows(crashed.path()).await;
    for ((sink, want), (_, got)) in want.iter().zip(&got) {
        assert!(!want.is_empty(), "{sink}: the straight run wrote rows");
        assert_eq!(got.len(), want.len(), "{sink}: as many rows (seed {seed})");
        assert_eq!(got, want, "{sink}: the same rows (seed {seed})");
    }
}
