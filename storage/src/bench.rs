//! The log's ingest benchmark, run by `sluice bench ingest`: Sluice's
//! append throughput beside a raw-RocksDB baseline that writes the same
//! bytes in the same batches with the same durability, measured in one run,
//! plus the rate of a sequential read of one partition.

use std::path::Path;
use std::time::{Duration, Instant};

use rocksdb::{WriteBatch, WriteOptions};

use crate::batch::{EncodedBatch, Record};
use crate::error::{Error, Result};
use crate::options::{Durability, StorageOptions};
use crate::read::ReadLimits;
use crate::storage::{CF_LOG, Storage};
use crate::topic::TopicConfig;

/// What to measure.
#[derive(Debug, Clone)]
pub struct IngestBenchOptions {
    /// Records to append in all.
    pub records: u64,
    /// Bytes of each record's value.
    pub record_bytes: usize,
    /// Partitions of the topic.
    pub partitions: u32,
    /// Records per appended batch.
    pub batch: usize,
    /// Concurrent writers (threads).
    pub writers: usize,
    /// Durability of the appends and of the baseline's writes.
    pub durability: Durability,
}

/// What was measured.
#[derive(Debug, Clone)]
pub struct IngestBenchReport {
    /// The options measured.
    pub options: IngestBenchOptions,
    /// Wall time of Sluice's appends.
    pub elapsed: Duration,
    /// Sluice's append rate.
    pub records_per_s: f64,
    /// Sluice's append rate in MB/s of record values.
    pub mb_per_s: f64,
    /// Raw RocksDB writing the same bytes in the same batches.
    pub baseline_records_per_s: f64,
    /// Sequential read of partition 0 after the appends.
    pub read_records_per_s: f64,
}

fn value_template(bytes: usize) -> Vec<u8> {
    // Printable, not all one byte, so compression does not flatter us.
    (0..bytes)
        .map(|i| b'a' + ((i * 7 + i / 26) % 26) as u8)
        .collect()
}

/// Runs the benchmark in `dir` (which should be empty; it is left with
/// the data written).
pub fn run_ingest(dir: &Path, options: &IngestBenchOptions) -> Result<IngestBenchReport> {
    if options.records == 0 || options.batch == 0 || options.writers == 0 || options.partitions == 0
    {
        return Err(Error::invalid(
            "records, batch, writers and partitions must all be positive",
        ));
    }
    let value = value_template(options.record_bytes);
    let template: Vec<Record> = (0..options.batch)
        .map(|i| Record::new(value.clone()).with_timestamp(1_700_000_000_000 + i as i64))
        .collect();
    // The baseline writes exactly the bytes Sluice stores for a full batch.
    let payload = EncodedBatch::rows(&template).bytes;
    let encoded_len = payload.len();

    let storage_options = StorageOptions::default()
        .with_durability(options.durability)
        .with_retention_check_interval(None);
    let storage = Storage::open(dir.join("sluice"), storage_options.clone())?;
    storage.create_topic(TopicConfig::new("bench", options.partitions))?;
    let elapsed = run_writers(options, |_writer, partition, count| {
        let records = &template[..count];
        storage
            .append_blocking("bench", partition, records)
            .map(|_| ())
    })?;
    let read_records_per_s = measure_read(&storage)?;
    storage.close()?;
    drop(storage);

    let baseline = Storage::open(dir.join("raw"), storage_options)?;
    let db = &baseline.inner.shared.db;
    let log = baseline.inner.shared.cf(CF_LOG)?;
    let sync = options.durability == Durability::Fsync;
    let sequence = std::sync::atomic::AtomicU64::new(0);
    let baseline_elapsed = run_writers(options, |_, partition, count| {
        let seq = sequence.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut key = [0u8; 16];
        key[0..4].copy_from_slice(&partition.to_be_bytes());
        key[8..16].copy_from_slice(&seq.to_be_bytes());
        let bytes = if count == options.batch {
            &payload[..]
        } else {
            &payload[..encoded_len * count / options.batch]
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(log, key, bytes);
        let mut write_options = WriteOptions::default();
        write_options.set_sync(sync);
        db.write_opt(batch, &write_options).map_err(Error::from)
    })?;
    drop(baseline);

    let seconds = elapsed.as_secs_f64();
    Ok(IngestBenchReport {
        options: options.clone(),
        elapsed,
        records_per_s: options.records as f64 / seconds,
        mb_per_s: (options.records as f64 * options.record_bytes as f64) / seconds / 1e6,
        baseline_records_per_s: options.records as f64 / baseline_elapsed.as_secs_f64(),
        read_records_per_s,
    })
}

/// Runs `options.writers` threads that together write `options.records`
/// records in batches; writer `w` cycles partitions starting at `w`.
fn run_writers(
    options: &IngestBenchOptions,
    write: impl Fn(usize, u32, usize) -> Result<()> + Sync,
) -> Result<Duration> {
    let per_writer = options.records / options.writers as u64;
    let extra = options.records % options.writers as u64;
    let start = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..options.writers)
            .map(|writer| {
                let write = &write;
                let mut left = per_writer + u64::from((writer as u64) < extra);
                scope.spawn(move || -> Result<()> {
                    let mut partition = writer as u32 % options.partitions;
                    while left > 0 {
                        let count = left.min(options.batch as u64) as usize;
                        write(writer, partition, count)?;
                        left -= count as u64;
                        partition = (partition + 1) % options.partitions;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| Error::Internal("bench writer panicked".into()))?
        })
    })?;
    Ok(start.elapsed())
}

fn measure_read(storage: &Storage) -> Result<f64> {
    let (start, end) = storage.offsets("bench", 0)?;
    let begin = Instant::now();
    let mut offset = start;
    let mut records = 0u64;
    let mut checksum = 0usize;
    while offset < end {
        let fetch = storage.read(
            "bench",
            0,
            offset,
            ReadLimits::records(100_000).with_max_bytes(32 << 20),
        )?;
        for batch in &fetch.batches {
            for record in batch.records()? {
                checksum = checksum.wrapping_add(record?.value.len());
                records += 1;
            }
        }
        offset = fetch.next_offset;
    }
    std::hint::black_box(checksum);
    Ok(records as f64 / begin.elapsed().as_secs_f64().max(1e-9))
}
