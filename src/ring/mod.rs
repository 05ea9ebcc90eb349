//! Shared-memory rings (being written).
