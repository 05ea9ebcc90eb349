//! `[io]`: how the shards talk to the kernel.

use serde::Deserialize;

/// Whether the data plane uses io_uring (`[io] uring`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UringMode {
    /// Batch each round's sends and receives through io_uring when the kernel has
    /// `IORING_OP_SEND`/`IORING_OP_RECV` (5.6); fall back to system calls otherwise.
    #[default]
    Auto,
    /// Never: one `send`/`recv` system call per operation (the fallback path).
    Off,
}

/// `[io]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct IoConfig {
    /// `"auto"` (default) or `"off"`.
    pub uring: UringMode,
}
