//! transport (being written).
