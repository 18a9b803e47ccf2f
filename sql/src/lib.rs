//! `sluice-sql`: the Sluice SQL dialect, the catalog of streams, and
//! planning to DataFusion.
//!
//! Not built yet: this crate holds no SQL support so far, and nothing in
//! Sluice claims otherwise. The SQL front end fills it (see
//! `ARCHITECTURE.md`).
