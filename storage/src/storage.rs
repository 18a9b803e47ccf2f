//! [`Storage`]: the handle to the log and the state store, and the
//! in-memory registry of topics and partitions.
//!
//! Every mutation goes through the write path (see `writer.rs`), which
//! assigns offsets and groups concurrent writes into one RocksDB write (and
//! one fsync). Reads go straight to RocksDB from the caller's thread; they
//! see only offsets below a partition's published end offset, which the
//! writer raises after a write is durable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Options,
    WriteBatch,
};

use crate::error::{Error, Result};
use crate::keys;
use crate::options::{LogCompression, StorageOptions};
use crate::topic::{
    PartitionInfo, TopicConfig, TopicDescription, TopicMeta, TopicSettings,
    validate_partition_count, validate_topic_name,
};
use crate::writer::{self, WriterHandle};

pub(crate) const CF_LOG: &str = "log";
/// The parts of columnar batches (see [`crate::batch`]).
pub(crate) const CF_COLUMNS: &str = "columns";
pub(crate) const CF_TIME_INDEX: &str = "time_index";
pub(crate) const CF_PARTITIONS: &str = "partitions";
pub(crate) const CF_TOPICS: &str = "topics";
pub(crate) const CF_GROUPS: &str = "groups";
pub(crate) const CF_CATALOG: &str = "catalog";
pub(crate) const CF_CHECKPOINTS: &str = "checkpoints";
const CF_META: &str = "meta";
const NEXT_TOPIC_ID_KEY: &[u8] = b"next_topic_id";

const ALL_CFS: [&str; 9] = [
    CF_LOG,
    CF_COLUMNS,
    CF_TIME_INDEX,
    CF_PARTITIONS,
    CF_TOPICS,
    CF_GROUPS,
    CF_CATALOG,
    CF_CHECKPOINTS,
    CF_META,
];

/// A handle to an open storage: the topic log and the state store in one
/// RocksDB instance. Cheap to clone; the storage closes when the last
/// handle is dropped or [`Storage::close`] is called.
///
/// Methods without `async` block on RocksDB or on the write path: call
/// them from a blocking context (`tokio::task::spawn_blocking`), not from
/// an async task that serves requests.
#[derive(Clone, Debug)]
pub struct Storage {
    pub(crate) inner: Arc<Inner>,
}

/// What handles share. Dropping the last one stops the background threads.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) writer: WriterHandle,
    cleaner: Mutex<Option<crate::retention::CleanerHandle>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the write path, the cleaner and readers share.
pub(crate) struct Shared {
    pub(crate) db: DB,
    pub(crate) options: StorageOptions,
    pub(crate) path: PathBuf,
    pub(crate) topics: RwLock<BTreeMap<String, Arc<TopicState>>>,
    pub(crate) next_topic_id: AtomicU32,
    /// Held while retention or compaction runs, so two passes never race.
    pub(crate) cleaning: Mutex<()>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A topic in memory. Only the holder of the writer lock changes it.
#[derive(Debug)]
pub(crate) struct TopicState {
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) settings: RwLock<TopicSettings>,
    pub(crate) partitions: RwLock<Vec<Arc<PartitionState>>>,
    pub(crate) dropped: AtomicBool,
    pub(crate) round_robin: AtomicU32,
}

/// A partition's offsets and size. The writer publishes them after each
/// durable write; everyone else only loads them.
#[derive(Debug)]
pub(crate) struct PartitionState {
    pub(crate) end_offset: AtomicU64,
    pub(crate) log_start_offset: AtomicU64,
    pub(crate) size_bytes: AtomicU64,
    /// The largest record timestamp ever appended (drives the time index).
    pub(crate) max_timestamp_ms: AtomicI64,
    /// Wakes readers waiting for new records; carries the end offset.
    pub(crate) appended: tokio::sync::watch::Sender<u64>,
    /// End offset up to which the last compaction pass looked.
    pub(crate) compacted_until: AtomicU64,
}

impl PartitionState {
    pub(crate) fn new(meta: PartitionMeta) -> Self {
        PartitionState {
            end_offset: AtomicU64::new(meta.end_offset),
            log_start_offset: AtomicU64::new(meta.log_start_offset),
            size_bytes: AtomicU64::new(meta.size_bytes),
            max_timestamp_ms: AtomicI64::new(meta.max_timestamp_ms),
            appended: tokio::sync::watch::Sender::new(meta.end_offset),
            compacted_until: AtomicU64::new(0),
        }
    }

    pub(crate) fn meta(&self) -> PartitionMeta {
        PartitionMeta {
            log_start_offset: self.log_start_offset.load(Ordering::Acquire),
            end_offset: self.end_offset.load(Ordering::Acquire),
            size_bytes: self.size_bytes.load(Ordering::Acquire),
            max_timestamp_ms: self.max_timestamp_ms.load(Ordering::Acquire),
        }
    }
}

/// The persisted form of a partition's offsets, in the `partitions` column
/// family, written in the same RocksDB write as the batches it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartitionMeta {
    pub(crate) log_start_offset: u64,
    pub(crate) end_offset: u64,
    pub(crate) size_bytes: u64,
    pub(crate) max_timestamp_ms: i64,
}

impl PartitionMeta {
    pub(crate) const EMPTY: PartitionMeta = PartitionMeta {
        log_start_offset: 0,
        end_offset: 0,
        size_bytes: 0,
        max_timestamp_ms: i64::MIN,
    };

    pub(crate) fn encode(&self) -> [u8; 32] {
        let mut bytes = [0u8; 32];
        bytes[0..8].copy_from_slice(&self.log_start_offset.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.end_offset.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.size_bytes.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.max_timestamp_ms.to_le_bytes());
        bytes
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 32 {
            return None;
        }
        let u = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        Some(PartitionMeta {
            log_start_offset: u(0),
            end_offset: u(8),
            size_bytes: u(16),
            max_timestamp_ms: u(24) as i64,
        })
    }
}

impl Shared {
    pub(crate) fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| Error::Internal(format!("missing column family {name}")))
    }

    pub(crate) fn topic(&self, name: &str) -> Result<Arc<TopicState>> {
        let topics = self.topics.read().map_err(|_| poisoned())?;
        topics
            .get(name)
            .cloned()
            .ok_or_else(|| Error::unknown_topic(name))
    }

    pub(crate) fn partition(
        &self,
        topic: &TopicState,
        partition: u32,
    ) -> Result<Arc<PartitionState>> {
        let partitions = topic.partitions.read().map_err(|_| poisoned())?;
        partitions
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| Error::NoSuchPartition {
                topic: topic.name.clone(),
                partition,
                partitions: partitions.len() as u32,
            })
    }
}

impl TopicState {
    pub(crate) fn partition_count(&self) -> u32 {
        self.partitions.read().map(|p| p.len() as u32).unwrap_or(0)
    }

    pub(crate) fn settings(&self) -> TopicSettings {
        self.settings.read().map(|s| s.clone()).unwrap_or_default()
    }

    fn meta(&self) -> TopicMeta {
        TopicMeta {
            id: self.id,
            name: self.name.clone(),
            partitions: self.partition_count(),
            settings: self.settings(),
        }
    }
}

pub(crate) fn poisoned() -> Error {
    Error::Internal("a storage lock was poisoned by a panic".to_string())
}

impl Storage {
    /// Opens (creating if needed) the storage in directory `path`.
    ///
    /// Blocks while RocksDB opens and replays its write-ahead log.
    pub fn open(path: impl AsRef<Path>, options: StorageOptions) -> Result<Storage> {
        let path = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&path)?;
        let db = open_db(&path, &options)?;
        let shared = Arc::new(Shared {
            db,
            options,
            path,
            topics: RwLock::new(BTreeMap::new()),
            next_topic_id: AtomicU32::new(0),
            cleaning: Mutex::new(()),
        });
        load_catalog(&shared)?;
        let (writer, writer_thread) = writer::spawn(shared.clone())?;
        let cleaner = shared
            .options
            .retention_check_interval
            .map(|interval| {
                crate::retention::spawn_cleaner(shared.clone(), writer.clone(), interval)
            })
            .transpose()?;
        Ok(Storage {
            inner: Arc::new(Inner {
                shared,
                writer,
                cleaner: Mutex::new(cleaner),
                writer_thread: Mutex::new(Some(writer_thread)),
            }),
        })
    }

    /// The directory this storage lives in.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// The options it was opened with.
    pub fn options(&self) -> &StorageOptions {
        &self.inner.shared.options
    }

    /// Creates a topic. Fails if the name is invalid or taken.
    pub fn create_topic(&self, config: TopicConfig) -> Result<TopicDescription> {
        validate_topic_name(&config.name)?;
        validate_partition_count(config.partitions)?;
        config.settings.validate()?;
        let name = config.name.clone();
        self.inner.writer.admin(move |shared, batch| {
            if shared
                .topics
                .read()
                .map_err(|_| poisoned())?
                .contains_key(&config.name)
            {
                return Err(Error::AlreadyExists(config.name));
            }
            let id = shared.next_topic_id.load(Ordering::Acquire);
            let next = id
                .checked_add(1)
                .ok_or_else(|| Error::Internal("topic ids exhausted".to_string()))?;
            let meta = TopicMeta {
                id,
                name: config.name.clone(),
                partitions: config.partitions,
                settings: config.settings.clone(),
            };
            batch.put_cf(shared.cf(CF_META)?, NEXT_TOPIC_ID_KEY, next.to_le_bytes());
            batch.put_cf(
                shared.cf(CF_TOPICS)?,
                config.name.as_bytes(),
                encode_topic_meta(&meta)?,
            );
            for partition in 0..config.partitions {
                batch.put_cf(
                    shared.cf(CF_PARTITIONS)?,
                    keys::partition_key(id, partition),
                    PartitionMeta::EMPTY.encode(),
                );
            }
            Ok(Box::new(move |shared: &Shared| {
                shared.next_topic_id.store(next, Ordering::Release);
                let state = topic_state(&meta, |_| PartitionMeta::EMPTY);
                if let Ok(mut topics) = shared.topics.write() {
                    topics.insert(meta.name.clone(), Arc::new(state));
                }
            }))
        })?;
        self.describe_topic(&name)
    }

    /// Drops a topic and deletes its records and committed group offsets.
    pub fn drop_topic(&self, name: &str) -> Result<()> {
        let topic = self.inner.shared.topic(name)?;
        self.inner.writer.admin(move |shared, batch| {
            if topic.dropped.load(Ordering::Acquire) {
                return Err(Error::unknown_topic(&topic.name));
            }
            let prefix = keys::topic_prefix(topic.id);
            let end = keys::topic_prefix(topic.id + 1);
            for cf in [CF_LOG, CF_COLUMNS, CF_TIME_INDEX, CF_PARTITIONS] {
                batch.delete_range_cf(shared.cf(cf)?, prefix, end);
            }
            batch.delete_cf(shared.cf(CF_TOPICS)?, topic.name.as_bytes());
            for key in crate::groups::offset_keys_of_topic(shared, topic.id)? {
                batch.delete_cf(shared.cf(CF_GROUPS)?, key);
            }
            Ok(Box::new(move |shared: &Shared| {
                topic.dropped.store(true, Ordering::Release);
                if let Ok(mut topics) = shared.topics.write() {
                    topics.remove(&topic.name);
                }
            }))
        })
    }

    /// Raises a topic's partition count. Partitions are never removed: a
    /// smaller count is refused, as in Kafka.
    pub fn set_partitions(&self, name: &str, partitions: u32) -> Result<()> {
        validate_partition_count(partitions)?;
        let topic = self.inner.shared.topic(name)?;
        self.inner.writer.admin(move |shared, batch| {
            let current = topic.partition_count();
            if partitions < current {
                return Err(Error::invalid(format!(
                    "topic \"{}\" has {current} partitions; partitions can be added but never removed",
                    topic.name
                )));
            }
            let mut meta = topic.meta();
            meta.partitions = partitions;
            batch.put_cf(shared.cf(CF_TOPICS)?, topic.name.as_bytes(), encode_topic_meta(&meta)?);
            for partition in current..partitions {
                batch.put_cf(
                    shared.cf(CF_PARTITIONS)?,
                    keys::partition_key(topic.id, partition),
                    PartitionMeta::EMPTY.encode(),
                );
            }
            Ok(Box::new(move |_: &Shared| {
                if let Ok(mut list) = topic.partitions.write() {
                    while (list.len() as u32) < partitions {
                        list.push(Arc::new(PartitionState::new(PartitionMeta::EMPTY)));
                    }
                }
            }))
        })
    }

    /// Replaces a topic's retention and cleanup settings.
    pub fn set_topic_settings(&self, name: &str, settings: TopicSettings) -> Result<()> {
        settings.validate()?;
        let topic = self.inner.shared.topic(name)?;
        self.inner.writer.admin(move |shared, batch| {
            let mut meta = topic.meta();
            meta.settings = settings.clone();
            batch.put_cf(
                shared.cf(CF_TOPICS)?,
                topic.name.as_bytes(),
                encode_topic_meta(&meta)?,
            );
            Ok(Box::new(move |_: &Shared| {
                if let Ok(mut current) = topic.settings.write() {
                    *current = settings;
                }
            }))
        })
    }

    /// The names of all topics, sorted.
    pub fn list_topics(&self) -> Vec<String> {
        self.inner
            .shared
            .topics
            .read()
            .map(|topics| topics.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// True when the topic exists.
    pub fn topic_exists(&self, name: &str) -> bool {
        self.inner.shared.topic(name).is_ok()
    }

    /// Every topic's description, by name; a topic dropped while this runs
    /// is left out.
    pub fn describe_topics(&self) -> Result<Vec<TopicDescription>> {
        let mut topics = Vec::new();
        for name in self.list_topics() {
            match self.describe_topic(&name) {
                Ok(description) => topics.push(description),
                Err(Error::NotFound { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(topics)
    }

    /// A topic's settings and per-partition offsets.
    pub fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let topic = self.inner.shared.topic(name)?;
        let partitions = topic.partitions.read().map_err(|_| poisoned())?;
        Ok(TopicDescription {
            name: topic.name.clone(),
            settings: topic.settings(),
            partitions: partitions
                .iter()
                .enumerate()
                .map(|(partition, state)| {
                    let meta = state.meta();
                    PartitionInfo {
                        partition: partition as u32,
                        log_start_offset: meta.log_start_offset,
                        end_offset: meta.end_offset,
                        size_bytes: meta.size_bytes,
                    }
                })
                .collect(),
        })
    }

    /// A topic's partition count.
    pub fn partition_count(&self, name: &str) -> Result<u32> {
        Ok(self.inner.shared.topic(name)?.partition_count())
    }

    /// The partition that the next keyless batch of `topic` goes to: the
    /// same round-robin [`Storage::produce`] uses, advanced by one.
    pub fn next_partition(&self, topic: &str) -> Result<u32> {
        let topic = self.inner.shared.topic(topic)?;
        let partitions = topic.partition_count().max(1);
        Ok(topic.round_robin.fetch_add(1, Ordering::Relaxed) % partitions)
    }

    /// `(log_start_offset, end_offset)` of a partition.
    pub fn offsets(&self, topic: &str, partition: u32) -> Result<(u64, u64)> {
        let topic = self.inner.shared.topic(topic)?;
        let state = self.inner.shared.partition(&topic, partition)?;
        let meta = state.meta();
        Ok((meta.log_start_offset, meta.end_offset))
    }

    /// Flushes the memtables and waits until RocksDB has no compaction
    /// pending or running, so that what follows (a benchmark) reads from
    /// table files and does not share the CPU with background work.
    pub fn settle(&self) -> Result<()> {
        let db = &self.inner.shared.db;
        for name in ALL_CFS {
            db.flush_cf(self.inner.shared.cf(name)?)?;
        }
        loop {
            let mut busy = 0;
            for name in ALL_CFS {
                let cf = self.inner.shared.cf(name)?;
                for property in [
                    "rocksdb.compaction-pending",
                    "rocksdb.num-running-compactions",
                ] {
                    busy += db.property_int_value_cf(cf, property)?.unwrap_or(0);
                }
            }
            if busy == 0 {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The bytes of every table file of the database (all topics, state
    /// and metadata; the WAL and memtables not counted).
    pub fn table_file_bytes(&self) -> Result<u64> {
        let db = &self.inner.shared.db;
        let mut total = 0;
        for name in ALL_CFS {
            let cf = self.inner.shared.cf(name)?;
            total += db
                .property_int_value_cf(cf, "rocksdb.total-sst-files-size")?
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// Stops the background cleaner and the writer (after the writes
    /// already queued), and flushes RocksDB's memtables. Other handles
    /// get [`Error::Closed`] afterwards.
    pub fn close(&self) -> Result<()> {
        self.inner.stop();
        self.inner.shared.db.flush_wal(true)?;
        Ok(())
    }
}

impl Inner {
    fn stop(&self) {
        if let Ok(mut cleaner) = self.cleaner.lock()
            && let Some(cleaner) = cleaner.take()
        {
            cleaner.stop();
        }
        self.writer.shutdown();
        if let Ok(mut thread) = self.writer_thread.lock()
            && let Some(thread) = thread.take()
        {
            let _ = thread.join();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop();
    }
}

fn encode_topic_meta(meta: &TopicMeta) -> Result<Vec<u8>> {
    serde_json::to_vec(meta).map_err(|e| Error::Internal(format!("encoding topic metadata: {e}")))
}

fn topic_state(meta: &TopicMeta, partition_meta: impl Fn(u32) -> PartitionMeta) -> TopicState {
    TopicState {
        id: meta.id,
        name: meta.name.clone(),
        settings: RwLock::new(meta.settings.clone()),
        partitions: RwLock::new(
            (0..meta.partitions)
                .map(|p| Arc::new(PartitionState::new(partition_meta(p))))
                .collect(),
        ),
        dropped: AtomicBool::new(false),
        round_robin: AtomicU32::new(0),
    }
}

fn open_db(path: &Path, options: &StorageOptions) -> Result<DB> {
    let cache = Cache::new_lru_cache(options.block_cache_bytes);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_block_size(64 * 1024);

    let mut db_options = Options::default();
    db_options.create_if_missing(true);
    db_options.create_missing_column_families(true);
    db_options
        .increase_parallelism(std::thread::available_parallelism().map_or(2, |n| n.get() as i32));
    db_options.set_max_background_jobs(4);
    db_options.set_bytes_per_sync(1024 * 1024);
    db_options.set_wal_bytes_per_sync(0);
    db_options.set_max_total_wal_size(512 * 1024 * 1024);
    // Table files are read through a memory map: a data block that is not
    // compressed (every column part) is then checksummed and read where the
    // page cache holds it, where `pread` would first copy it into a heap
    // buffer (measured: the kernel's copy was a fifth of the CPU of a
    // projection over a columnar stream).
    db_options.set_allow_mmap_reads(true);

    let mut log_options = Options::default();
    log_options.set_block_based_table_factory(&table);
    log_options.set_write_buffer_size(options.write_buffer_bytes);
    log_options.set_max_write_buffer_number(4);
    // The same codec at every level (`LogCompression` says why none is the
    // default): queries scan the whole log, not just its newest files.
    let codec = match options.log_compression {
        LogCompression::None => DBCompressionType::None,
        LogCompression::Lz4 => DBCompressionType::Lz4,
        LogCompression::Zstd => DBCompressionType::Zstd,
    };
    log_options.set_compression_type(codec);
    log_options.set_bottommost_compression_type(codec);
    log_options.set_target_file_size_base(64 * 1024 * 1024);

    let mut small_options = Options::default();
    small_options.set_block_based_table_factory(&table);
    small_options.set_compression_type(DBCompressionType::Lz4);

    // Column parts are read whole, only the columns a query uses: no
    // block compression (a stream sets Arrow's own buffer compression if
    // it wants it), and scans do not fill the block cache with them.
    let mut column_options = log_options.clone();
    column_options.set_compression_type(DBCompressionType::None);
    column_options.set_bottommost_compression_type(DBCompressionType::None);

    let descriptors = ALL_CFS.iter().map(|name| {
        let cf_options = match *name {
            CF_LOG => log_options.clone(),
            CF_COLUMNS => column_options.clone(),
            _ => small_options.clone(),
        };
        ColumnFamilyDescriptor::new(*name, cf_options)
    });
    Ok(DB::open_cf_descriptors(&db_options, path, descriptors)?)
}

/// Loads topics and partition offsets into memory.
fn load_catalog(shared: &Shared) -> Result<()> {
    if let Some(raw) = shared.db.get_cf(shared.cf(CF_META)?, NEXT_TOPIC_ID_KEY)? {
        let raw: [u8; 4] = raw
            .as_slice()
            .try_into()
            .map_err(|_| Error::Internal("malformed next topic id".to_string()))?;
        shared
            .next_topic_id
            .store(u32::from_le_bytes(raw), Ordering::Release);
    }
    let mut topics = shared.topics.write().map_err(|_| poisoned())?;
    let iter = shared
        .db
        .iterator_cf(shared.cf(CF_TOPICS)?, rocksdb::IteratorMode::Start);
    for entry in iter {
        let (_, value) = entry?;
        let meta: TopicMeta = serde_json::from_slice(&value)
            .map_err(|e| Error::Internal(format!("malformed topic metadata: {e}")))?;
        let mut partition_metas = Vec::with_capacity(meta.partitions as usize);
        for partition in 0..meta.partitions {
            let raw = shared.db.get_cf(
                shared.cf(CF_PARTITIONS)?,
                keys::partition_key(meta.id, partition),
            )?;
            let partition_meta = match raw {
                Some(raw) => PartitionMeta::decode(&raw).ok_or_else(|| {
                    Error::Internal(format!("malformed metadata of {}/{partition}", meta.name))
                })?,
                None => PartitionMeta::EMPTY,
            };
            partition_metas.push(partition_meta);
        }
        let state = topic_state(&meta, |p| partition_metas[p as usize]);
        topics.insert(meta.name.clone(), Arc::new(state));
    }
    Ok(())
}

/// Adds the persisted metadata of a partition to a write batch.
pub(crate) fn put_partition_meta(
    shared: &Shared,
    batch: &mut WriteBatch,
    topic_id: u32,
    partition: u32,
    meta: &PartitionMeta,
) -> Result<()> {
    batch.put_cf(
        shared.cf(CF_PARTITIONS)?,
        keys::partition_key(topic_id, partition),
        meta.encode(),
    );
    Ok(())
}
