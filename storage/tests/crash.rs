//! Crash test: a child process appends (from several threads, including
//! atomic writes across two topics with a checkpoint entry) and reports each
//! acknowledged batch; the parent kills it with SIGKILL at a random moment,
//! reopens the storage, and checks that every acknowledged record is there,
//! intact, that no partial batch is visible, and that each atomic write is
//! all there or not at all. Repeated many times on the same directory.
//!
//! `SLUICE_CRASH_ITERATIONS` sets the number of kills (default 12).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::Rng;
use sluice_storage::{
    AtomicWrite, Durability, ReadLimits, Record, StateSpace, Storage, StorageOptions, TopicConfig,
};

const TOPIC: &str = "crash";
const MIRROR: &str = "crash_mirror";
const PARTITIONS: u32 = 3;
const WRITERS: u32 = 3;

fn value(run: u32, writer: u32, seq: u64, index: usize, count: usize) -> Vec<u8> {
    format!(
        "{run}-{writer}-{seq}-{index}-{count}-{}",
        "x".repeat(index % 17)
    )
    .into_bytes()
}

fn open(dir: &str, durability: Durability) -> Storage {
    let options = StorageOptions::default()
        .with_durability(durability)
        .with_retention_check_interval(None);
    Storage::open(dir, options).expect("open storage")
}

/// The child: append until killed, printing `ack` lines after each
/// acknowledged write.
fn child(dir: &str, run: u32, durability: Durability) {
    let storage = open(dir, durability);
    for topic in [TOPIC, MIRROR] {
        if !storage.topic_exists(topic) {
            storage
                .create_topic(TopicConfig::new(topic, PARTITIONS))
                .expect("create topic");
        }
    }
    println!("ready");
    std::io::stdout().flush().expect("flush");
    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            let storage = storage.clone();
            scope.spawn(move || {
                let mut rng = rand::rng();
                for seq in 0u64.. {
                    let count = rng.random_range(1..40usize);
                    let records: Vec<Record> = (0..count)
                        .map(|i| {
                            Record::new(value(run, writer, seq, i, count))
                                .with_timestamp(seq as i64)
                        })
                        .collect();
                    let partition = (writer + seq as u32) % PARTITIONS;
                    let line = if writer == 0 {
                        // Atomic: the same batch to two topics plus a checkpoint.
                        let mut write = AtomicWrite::new();
                        write.append(TOPIC, partition, records.clone());
                        write.append(MIRROR, partition, records);
                        write.put(
                            StateSpace::Checkpoints,
                            format!("run{run}").into_bytes(),
                            seq.to_le_bytes().to_vec(),
                        );
                        let outcomes = storage.commit_blocking(write).expect("commit");
                        format!(
                            "ack {writer} {seq} {partition} {} {count}\n",
                            outcomes[0].base_offset
                        )
                    } else {
                        let outcome = storage
                            .append_blocking(TOPIC, partition, &records)
                            .expect("append");
                        format!(
                            "ack {writer} {seq} {partition} {} {count}\n",
                            outcome.base_offset
                        )
                    };
                    let mut out = std::io::stdout().lock();
                    out.write_all(line.as_bytes()).expect("write ack");
                    out.flush().expect("flush ack");
                }
            });
        }
    });
}

struct Ack {
    writer: u32,
    seq: u64,
    partition: u32,
    base_offset: u64,
    count: usize,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ack ")?.split(' ');
    Some(Ack {
        writer: parts.next()?.parse().ok()?,
        seq: parts.next()?.parse().ok()?,
        partition: parts.next()?.parse().ok()?,
        base_offset: parts.next()?.parse().ok()?,
        count: parts.next()?.parse().ok()?,
    })
}

fn read_all(storage: &Storage, topic: &str, partition: u32) -> Vec<(u64, Vec<u8>)> {
    let (start, end) = storage.offsets(topic, partition).expect("offsets");
    let mut offset = start;
    let mut records = Vec::new();
    while offset < end {
        let fetch = storage
            .read(topic, partition, offset, ReadLimits::records(10_000))
            .expect("read");
        for record in fetch.records().expect("decode") {
            records.push((record.offset, record.record.value));
        }
        offset = fetch.next_offset;
    }
    records
}

/// Every record belongs to a complete batch: runs of `run-writer-seq-i-n`
/// with `i` going `0..n` at consecutive offsets. Returns the batches found
/// as `(run, writer, seq) -> (base offset, count)`.
fn check_complete_batches(
    records: &[(u64, Vec<u8>)],
    topic: &str,
    partition: u32,
) -> Vec<((u32, u32, u64), u64, usize)> {
    let mut batches = Vec::new();
    let mut expected_offset = 0;
    let mut at = 0;
    while at < records.len() {
        let (offset, first) = &records[at];
        assert_eq!(
            *offset, expected_offset,
            "offsets of {topic}/{partition} are not dense"
        );
        let text = String::from_utf8(first.clone()).expect("utf8 value");
        let fields: Vec<&str> = text.splitn(6, '-').collect();
        let run: u32 = fields[0].parse().expect("run");
        let writer: u32 = fields[1].parse().expect("writer");
        let seq: u64 = fields[2].parse().expect("seq");
        let count: usize = fields[4].parse().expect("count");
        assert_eq!(
            fields[3], "0",
            "{topic}/{partition} offset {offset}: a batch starts mid-way"
        );
        assert!(
            at + count <= records.len(),
            "{topic}/{partition} offset {offset}: partial batch visible"
        );
        for i in 0..count {
            assert_eq!(records[at + i].0, offset + i as u64);
            assert_eq!(
                records[at + i].1,
                value(run, writer, seq, i, count),
                "{topic}/{partition} offset {}",
                offset + i as u64
            );
        }
        batches.push(((run, writer, seq), *offset, count));
        at += count;
        expected_offset = offset + count as u64;
    }
    batches
}

fn parent() {
    let iterations: u32 = std::env::var("SLUICE_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_path = dir.path().to_str().expect("utf8 path").to_string();
    let exe = std::env::current_exe().expect("current exe");
    let mut rng = rand::rng();
    let mut acknowledged = 0usize;
    for run in 0..iterations {
        let durability = if run % 2 == 0 { "fsync" } else { "os" };
        let mut child = Command::new(&exe)
            .args(["--child", &dir_path, &run.to_string(), durability])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let mut stdout = BufReader::new(child.stdout.take().expect("child stdout"));
        let mut ready = String::new();
        stdout
            .read_line(&mut ready)
            .expect("read the child's first line");
        assert_eq!(ready.trim_end(), "ready", "the child did not start");
        let reader = std::thread::spawn(move || {
            // Only whole lines count: a line cut by the kill was never acknowledged.
            let mut lines = Vec::new();
            let mut line = String::new();
            while matches!(stdout.read_line(&mut line), Ok(n) if n > 0) {
                if let Some(whole) = line.strip_suffix('\n') {
                    lines.push(whole.to_string());
                }
                line.clear();
            }
            lines
        });
        // Kill the child at a random moment while it writes.
        std::thread::sleep(Duration::from_millis(rng.random_range(20..400)));
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");
        let lines = reader.join().expect("reader thread");
        let acks: Vec<Ack> = lines.iter().filter_map(|l| parse_ack(l)).collect();
        acknowledged += acks.len();

        let storage = open(&dir_path, Durability::Os);
        let mut found = std::collections::HashMap::new();
        for partition in 0..PARTITIONS {
            let records = read_all(&storage, TOPIC, partition);
            for (id, base, count) in check_complete_batches(&records, TOPIC, partition) {
                found.insert(id, (partition, base, count));
            }
        }
        for ack in &acks {
            let got = found.get(&(run, ack.writer, ack.seq));
            assert_eq!(
                got,
                Some(&(ack.partition, ack.base_offset, ack.count)),
                "run {run}: acknowledged batch {}/{} lost or moved",
                ack.writer,
                ack.seq
            );
        }
        // Atomic writes: the mirror holds exactly writer 0's batches of the
        // main topic, and the checkpoint names the last of them.
        let mut mirrored = std::collections::HashSet::new();
        for partition in 0..PARTITIONS {
            let records = read_all(&storage, MIRROR, partition);
            for (id, _, count) in check_complete_batches(&records, MIRROR, partition) {
                assert_eq!(id.1, 0, "only writer 0 writes the mirror");
                let main = found
                    .get(&id)
                    .expect("a mirrored batch is in the main topic too");
                assert_eq!(main.2, count);
                mirrored.insert(id);
            }
        }
        for id in found.keys().filter(|id| id.1 == 0) {
            assert!(
                mirrored.contains(id),
                "batch {id:?} is in the main topic but not the mirror"
            );
        }
        let checkpoint = storage
            .state_get(StateSpace::Checkpoints, format!("run{run}").as_bytes())
            .expect("checkpoint");
        let last_seq = mirrored
            .iter()
            .filter(|id| id.0 == run)
            .map(|id| id.2)
            .max();
        let checkpoint_seq =
            checkpoint.map(|raw| u64::from_le_bytes(raw.try_into().expect("8 bytes")));
        assert_eq!(
            checkpoint_seq, last_seq,
            "run {run}: checkpoint and committed batches disagree"
        );
        storage.close().expect("close");
    }
    assert!(acknowledged > 0, "the children never acknowledged a write");
    println!("crash test: {iterations} kills, {acknowledged} acknowledged writes, all intact");
    println!("test result: ok. 1 passed; 0 failed; 0 ignored");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let durability = Durability::parse(&args[4]).expect("durability");
        child(&args[2], args[3].parse().expect("run"), durability);
        return;
    }
    // Under `cargo test`, libtest-style flags may be passed: ignore them.
    parent();
}
