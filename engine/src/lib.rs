//! `sluice-engine`: the continuous query runtime and the public library API
//! (`Engine`, `Producer`, `QueryHandle`).
//!
//! Not built yet: the engine arrives with continuous queries. Until then,
//! embedders use [`sluice_storage`] directly for the log; it is re-exported
//! here so that the dependency direction `engine -> storage` is already the
//! one users will keep.

pub use sluice_storage as storage;
