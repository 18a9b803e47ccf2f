//! The write path: the one place that assigns offsets and writes to
//! RocksDB.
//!
//! Callers encode their batches on their own threads and queue them. Whoever
//! holds the writer lock — a blocking caller, or the writer thread on behalf
//! of async callers — drains everything queued, stages it into one
//! `WriteBatch` (batches, time index entries, partition metadata, state
//! entries), writes it with one fsync under `Durability::Fsync` (group
//! commit), and only then publishes the new end offsets and answers the
//! callers. A request is validated before any of it is staged, so a bad
//! request fails alone and nothing of it is written.
//!
//! This is flat combining, as RocksDB's own write thread does it: an
//! uncontended blocking caller writes on its own thread with no hand-off,
//! while concurrent callers share one write and one fsync. Offsets are
//! assigned in WAL order without a lock held by anyone but the combiner.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::JoinHandle;

use rocksdb::{WriteBatch, WriteOptions};

use crate::batch::EncodedBatch;
use crate::error::{Error, Result};
use crate::keys;
use crate::options::Durability;
use crate::storage::{
    CF_COLUMNS, CF_LOG, CF_TIME_INDEX, PartitionMeta, PartitionState, Shared, TopicState,
    put_partition_meta,
};

/// Writes grouped into one RocksDB write stop growing past this size.
const MAX_GROUP_BYTES: usize = 32 * 1024 * 1024;

/// Applied to the in-memory state after an admin write is durable.
pub(crate) type Publish = Box<dyn FnOnce(&Shared) + Send>;

/// Stages an admin change into a write batch; returns what to publish once
/// the write succeeded.
pub(crate) type AdminFn = Box<dyn FnOnce(&Shared, &mut WriteBatch) -> Result<Publish> + Send>;

/// Where the writer sends its answer: an async task or a blocked thread.
pub(crate) enum Reply<T> {
    Async(tokio::sync::oneshot::Sender<Result<T>>),
    Blocking(mpsc::SyncSender<Result<T>>),
}

impl<T> Reply<T> {
    fn send(self, result: Result<T>) {
        // A caller that stopped waiting is not an error of the write.
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(result);
            }
            Reply::Blocking(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

pub(crate) enum WriterCommand {
    Write {
        request: WriteRequest,
        reply: Reply<Vec<AppendOutcome>>,
    },
    Admin {
        op: AdminFn,
        reply: Reply<()>,
    },
}

/// Appends and state changes that must land together or not at all.
#[derive(Default)]
pub(crate) struct WriteRequest {
    pub(crate) appends: Vec<PendingAppend>,
    pub(crate) state: Vec<StateOp>,
}

impl WriteRequest {
    /// A request of one append.
    pub(crate) fn append(append: PendingAppend) -> Self {
        WriteRequest {
            appends: vec![append],
            state: Vec::new(),
        }
    }

    fn bytes(&self) -> usize {
        self.appends
            .iter()
            .map(|a| a.batch.stored_len())
            .sum::<usize>()
            + self
                .state
                .iter()
                .map(|s| s.key.len() + s.value.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
    }
}

/// One encoded batch bound for one partition.
pub(crate) struct PendingAppend {
    pub(crate) topic: Arc<TopicState>,
    pub(crate) partition: u32,
    pub(crate) batch: EncodedBatch,
}

/// A put (`Some`) or delete (`None`) of a state store key.
pub(crate) struct StateOp {
    pub(crate) column_family: &'static str,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Option<Vec<u8>>,
}

/// Where an appended batch landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The offset of the batch's first record.
    pub base_offset: u64,
    /// How many records the batch holds (offsets `base_offset..base_offset + record_count`).
    pub record_count: u32,
}

/// The queue of writes and the lock whose holder performs them.
#[derive(Clone)]
pub(crate) struct WriterHandle {
    core: Arc<Core>,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle").finish_non_exhaustive()
    }
}

struct Core {
    queue: Mutex<Queue>,
    writer: Mutex<Writer>,
    /// Wakes the writer thread to combine on behalf of async callers.
    kick: Mutex<Sender<()>>,
}

struct Queue {
    commands: VecDeque<WriterCommand>,
    closed: bool,
}

impl WriterHandle {
    /// Queues a command; fails once the writer is shut down.
    fn push(&self, command: WriterCommand) -> Result<()> {
        let mut queue = self.core.queue.lock().map_err(|_| Error::Closed)?;
        if queue.closed {
            return Err(Error::Closed);
        }
        queue.commands.push_back(command);
        Ok(())
    }

    /// Has the writer thread combine, for callers that must not block.
    fn kick(&self) {
        if let Ok(kick) = self.core.kick.lock() {
            let _ = kick.send(());
        }
    }

    /// Closes the queue: later writes fail with `Error::Closed`; the writer
    /// thread writes what was queued before, then exits.
    pub(crate) fn shutdown(&self) {
        if let Ok(mut queue) = self.core.queue.lock() {
            queue.closed = true;
        }
        self.kick();
    }

    /// Runs an admin change through the writer and waits for it.
    pub(crate) fn admin(
        &self,
        op: impl FnOnce(&Shared, &mut WriteBatch) -> Result<Publish> + Send + 'static,
    ) -> Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.push(WriterCommand::Admin {
            op: Box::new(op),
            reply: Reply::Blocking(tx),
        })?;
        self.core.combine();
        rx.recv().map_err(|_| Error::Closed)?
    }

    /// Queues a write for the writer thread; the answer arrives on the
    /// returned receiver.
    pub(crate) fn write_async(
        &self,
        request: WriteRequest,
    ) -> tokio::sync::oneshot::Receiver<Result<Vec<AppendOutcome>>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // If the writer is gone, the command (and `tx`) is dropped and the
        // receiver reports it.
        let _ = self.push(WriterCommand::Write {
            request,
            reply: Reply::Async(tx),
        });
        self.kick();
        rx
    }

    /// Queues a write for the writer thread and waits for it, without
    /// blocking the async runtime.
    pub(crate) async fn write(&self, request: WriteRequest) -> Result<Vec<AppendOutcome>> {
        self.write_async(request).await.map_err(|_| Error::Closed)?
    }

    /// Queues a write, performs it (with whatever else is queued) unless
    /// another thread is already writing, and blocks until it is durable.
    pub(crate) fn write_blocking(&self, request: WriteRequest) -> Result<Vec<AppendOutcome>> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.push(WriterCommand::Write {
            request,
            reply: Reply::Blocking(tx),
        })?;
        self.core.combine();
        rx.recv().map_err(|_| Error::Closed)?
    }
}

impl Core {
    /// Performs queued commands while this thread holds the writer lock.
    /// If another thread holds it, returns at once: that thread looks at
    /// the queue again after it lets go, so nothing queued is stranded.
    fn combine(&self) {
        loop {
            {
                let writer = match self.writer.try_lock() {
                    Ok(writer) => writer,
                    Err(TryLockError::WouldBlock) => return,
                    Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                };
                while let Some(work) = self.next_work() {
                    match work {
                        Work::Admin { op, reply } => reply.send(writer.run_admin(op)),
                        Work::Writes(group) => writer.commit_group(group),
                    }
                }
            }
            let empty = self
                .queue
                .lock()
                .map(|q| q.commands.is_empty())
                .unwrap_or(true);
            if empty {
                return;
            }
        }
    }

    /// The next admin command, or every write queued before the next admin
    /// command (up to a size limit).
    fn next_work(&self) -> Option<Work> {
        let mut queue = self.queue.lock().ok()?;
        let mut group = Vec::new();
        let mut bytes = 0usize;
        while bytes < MAX_GROUP_BYTES {
            match queue.commands.pop_front() {
                Some(WriterCommand::Write { request, reply }) => {
                    bytes += request.bytes();
                    group.push((request, reply));
                }
                Some(WriterCommand::Admin { op, reply }) => {
                    if group.is_empty() {
                        return Some(Work::Admin { op, reply });
                    }
                    queue
                        .commands
                        .push_front(WriterCommand::Admin { op, reply });
                    break;
                }
                None => break,
            }
        }
        (!group.is_empty()).then_some(Work::Writes(group))
    }
}

enum Work {
    Admin { op: AdminFn, reply: Reply<()> },
    Writes(Vec<(WriteRequest, Reply<Vec<AppendOutcome>>)>),
}

/// Starts the writer thread, which combines on behalf of async callers.
pub(crate) fn spawn(shared: Arc<Shared>) -> Result<(WriterHandle, JoinHandle<()>)> {
    let (kick, kicked) = mpsc::channel();
    let core = Arc::new(Core {
        queue: Mutex::new(Queue {
            commands: VecDeque::new(),
            closed: false,
        }),
        writer: Mutex::new(Writer::new(shared)),
        kick: Mutex::new(kick),
    });
    let thread_core = core.clone();
    let thread = std::thread::Builder::new()
        .name("sluice-writer".to_string())
        .spawn(move || run_writer_thread(&thread_core, &kicked))?;
    Ok((WriterHandle { core }, thread))
}

fn run_writer_thread(core: &Core, kicked: &Receiver<()>) {
    while kicked.recv().is_ok() {
        core.combine();
        let closed = core.queue.lock().map(|q| q.closed).unwrap_or(true);
        if closed {
            // Everything queued before the close has been written.
            core.combine();
            return;
        }
    }
}

struct Writer {
    shared: Arc<Shared>,
    write_options: WriteOptions,
}

/// A partition's offsets as staged in the current group, before publishing.
struct Cursor {
    topic: Arc<TopicState>,
    partition: u32,
    state: Arc<PartitionState>,
    meta: PartitionMeta,
}

impl Writer {
    fn new(shared: Arc<Shared>) -> Self {
        let mut write_options = WriteOptions::default();
        write_options.set_sync(shared.options.durability == Durability::Fsync);
        Writer {
            shared,
            write_options,
        }
    }

    fn run_admin(&self, op: AdminFn) -> Result<()> {
        let mut batch = WriteBatch::default();
        let publish = op(&self.shared, &mut batch)?;
        if !batch.is_empty() {
            self.shared.db.write_opt(batch, &self.write_options)?;
        }
        publish(&self.shared);
        Ok(())
    }

    fn commit_group(&self, group: Vec<(WriteRequest, Reply<Vec<AppendOutcome>>)>) {
        let mut batch = WriteBatch::default();
        let mut cursors: HashMap<(u32, u32), Cursor> = HashMap::new();
        let mut accepted = Vec::with_capacity(group.len());
        for (request, reply) in group {
            match self.validate(&request) {
                Ok(()) => match self.stage(&mut batch, &mut cursors, request) {
                    Ok(outcomes) => accepted.push((reply, outcomes)),
                    Err(error) => {
                        // Staging fails only on a broken invariant, after
                        // part of the request may be in the batch: fail all.
                        reply.send(Err(Error::Internal(error.to_string())));
                        for (reply, _) in accepted {
                            reply.send(Err(Error::Internal(error.to_string())));
                        }
                        return;
                    }
                },
                Err(error) => reply.send(Err(error)),
            }
        }
        if accepted.is_empty() {
            return;
        }
        let result = self.finish_and_write(batch, &cursors);
        match result {
            Ok(()) => {
                self.publish(&cursors);
                for (reply, outcomes) in accepted {
                    reply.send(Ok(outcomes));
                }
            }
            Err(error) => {
                let message = error.to_string();
                for (reply, _) in accepted {
                    reply.send(Err(Error::Internal(format!("write failed: {message}"))));
                }
            }
        }
    }

    fn validate(&self, request: &WriteRequest) -> Result<()> {
        for append in &request.appends {
            if append.topic.dropped.load(Ordering::Acquire) {
                return Err(Error::unknown_topic(&append.topic.name));
            }
            self.shared.partition(&append.topic, append.partition)?;
        }
        Ok(())
    }

    fn stage(
        &self,
        batch: &mut WriteBatch,
        cursors: &mut HashMap<(u32, u32), Cursor>,
        request: WriteRequest,
    ) -> Result<Vec<AppendOutcome>> {
        let log = self.shared.cf(CF_LOG)?;
        let columns = self.shared.cf(CF_COLUMNS)?;
        let time_index = self.shared.cf(CF_TIME_INDEX)?;
        let mut outcomes = Vec::with_capacity(request.appends.len());
        for append in request.appends {
            let key = (append.topic.id, append.partition);
            let cursor = match cursors.entry(key) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    let state = self.shared.partition(&append.topic, append.partition)?;
                    let meta = state.meta();
                    entry.insert(Cursor {
                        topic: append.topic.clone(),
                        partition: append.partition,
                        state,
                        meta,
                    })
                }
            };
            let base_offset = cursor.meta.end_offset;
            batch.put_cf(
                log,
                keys::batch_key(append.topic.id, append.partition, base_offset),
                &append.batch.bytes,
            );
            for (part, bytes) in append.batch.parts.iter().enumerate() {
                let key =
                    keys::column_key(append.topic.id, append.partition, base_offset, part as u16);
                batch.put_cf(columns, key, bytes);
            }
            if append.batch.max_timestamp_ms > cursor.meta.max_timestamp_ms {
                batch.put_cf(
                    time_index,
                    keys::time_index_key(
                        append.topic.id,
                        append.partition,
                        append.batch.max_timestamp_ms,
                    ),
                    base_offset.to_le_bytes(),
                );
                cursor.meta.max_timestamp_ms = append.batch.max_timestamp_ms;
            }
            cursor.meta.end_offset += u64::from(append.batch.record_count);
            cursor.meta.size_bytes += append.batch.stored_len() as u64;
            outcomes.push(AppendOutcome {
                topic: append.topic.name.clone(),
                partition: append.partition,
                base_offset,
                record_count: append.batch.record_count,
            });
        }
        for op in request.state {
            let cf = self.shared.cf(op.column_family)?;
            match op.value {
                Some(value) => batch.put_cf(cf, op.key, value),
                None => batch.delete_cf(cf, op.key),
            }
        }
        Ok(outcomes)
    }

    fn finish_and_write(
        &self,
        mut batch: WriteBatch,
        cursors: &HashMap<(u32, u32), Cursor>,
    ) -> Result<()> {
        for cursor in cursors.values() {
            put_partition_meta(
                &self.shared,
                &mut batch,
                cursor.topic.id,
                cursor.partition,
                &cursor.meta,
            )?;
        }
        self.shared.db.write_opt(batch, &self.write_options)?;
        Ok(())
    }

    fn publish(&self, cursors: &HashMap<(u32, u32), Cursor>) {
        for cursor in cursors.values() {
            let state = &cursor.state;
            state
                .size_bytes
                .store(cursor.meta.size_bytes, Ordering::Release);
            state
                .max_timestamp_ms
                .store(cursor.meta.max_timestamp_ms, Ordering::Release);
            // The end offset last: a reader that sees it sees the batch.
            state
                .end_offset
                .store(cursor.meta.end_offset, Ordering::Release);
            state.appended.send_replace(cursor.meta.end_offset);
        }
    }
}
