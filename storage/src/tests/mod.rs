//! Unit tests that need crate internals.
mod columnar;
mod model;
