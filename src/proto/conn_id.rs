//! [`ConnId`]: how the gateway and backends name a connection.
//!
//! Layout (design §3): `shard (8 bits) | generation (24 bits) | slot (32 bits)`. The slot
//! indexes the shard's connection table; the generation makes a stale id detectable in O(1).
//! Generations start at 1 (and skip 0 when they wrap), so no connection's id is 0: the ring
//! protocol reserves `conn = 0` for records that are not connection-scoped.
//! It lives in `proto` because backends (which never link the runtime) use it too.

/// A connection id, unique within one gateway process while the connection lives.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// Mask of the 24-bit generation.
    pub const GENERATION_MASK: u32 = (1 << 24) - 1;

    /// Build an id; `generation` is truncated to 24 bits.
    #[inline]
    pub const fn new(shard: u8, generation: u32, slot: u32) -> Self {
        ConnId(
            ((shard as u64) << 56)
                | (((generation & Self::GENERATION_MASK) as u64) << 32)
                | slot as u64,
        )
    }

    /// The owning shard.
    #[inline]
    pub const fn shard(self) -> u8 {
        (self.0 >> 56) as u8
    }

    /// The slot generation.
    #[inline]
    pub const fn generation(self) -> u32 {
        ((self.0 >> 32) as u32) & Self::GENERATION_MASK
    }

    /// The slab slot.
    #[inline]
    pub const fn slot(self) -> u32 {
        self.0 as u32
    }
}

impl std::fmt::Debug for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}:{}.{}", self.shard(), self.slot(), self.generation())
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let id = ConnId::new(255, 0xAB_CDEF, 0xDEAD_BEEF);
        assert_eq!(id.shard(), 255);
        assert_eq!(id.generation(), 0xAB_CDEF);
        assert_eq!(id.slot(), 0xDEAD_BEEF);
        assert_eq!(ConnId::new(1, 1 << 24, 0).generation(), 0);
    }
}
