//! The state store: key-value spaces beside the log, in the same RocksDB
//! instance, so that a continuous query can commit output records, source
//! offsets and operator state in one atomic write ([`crate::AtomicWrite`]).

use crate::error::Result;
use crate::keys::prefix_end;
use crate::storage::{CF_CATALOG, CF_CHECKPOINTS, Storage};
use crate::writer::{StateOp, WriteRequest};

/// A key space of the state store, each its own column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateSpace {
    /// Streams, queries and other catalog objects of the layers above.
    Catalog,
    /// Continuous queries' checkpoints: source offsets, watermarks and
    /// operator state.
    Checkpoints,
}

impl StateSpace {
    pub(crate) fn column_family(self) -> &'static str {
        match self {
            StateSpace::Catalog => CF_CATALOG,
            StateSpace::Checkpoints => CF_CHECKPOINTS,
        }
    }
}

impl Storage {
    /// Reads one state key.
    pub fn state_get(&self, space: StateSpace, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let shared = &self.inner.shared;
        Ok(shared.db.get_cf(shared.cf(space.column_family())?, key)?)
    }

    /// All `(key, value)` pairs whose key starts with `prefix`, in key order.
    pub fn state_scan(&self, space: StateSpace, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let shared = &self.inner.shared;
        let mut options = rocksdb::ReadOptions::default();
        if let Some(end) = prefix_end(prefix) {
            options.set_iterate_upper_bound(end);
        }
        let mut iter = shared
            .db
            .raw_iterator_cf_opt(shared.cf(space.column_family())?, options);
        iter.seek(prefix);
        let mut entries = Vec::new();
        while iter.valid() {
            if let (Some(key), Some(value)) = (iter.key(), iter.value()) {
                entries.push((key.to_vec(), value.to_vec()));
            }
            iter.next();
        }
        iter.status()?;
        Ok(entries)
    }

    /// Sets one state key durably.
    pub fn state_put(&self, space: StateSpace, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.write_state(space, key, Some(value))
    }

    /// Deletes one state key durably.
    pub fn state_delete(&self, space: StateSpace, key: Vec<u8>) -> Result<()> {
        self.write_state(space, key, None)
    }

    fn write_state(&self, space: StateSpace, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<()> {
        let request = WriteRequest {
            appends: Vec::new(),
            state: vec![StateOp {
                column_family: space.column_family(),
                key,
                value,
            }],
        };
        self.inner.writer.write_blocking(request).map(|_| ())
    }
}
