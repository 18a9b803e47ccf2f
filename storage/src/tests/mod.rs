//! Unit tests that need crate internals.
mod model;
