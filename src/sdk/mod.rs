//! Backend SDK (being written).
