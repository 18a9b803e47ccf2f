//! `sluice-tests`: cross-crate integration tests. The SQL logic tests and
//! the Nexmark suite live here once the SQL layer exists; the log's own
//! tests live in `storage/tests`.
