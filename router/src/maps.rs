//! Maps keyed by names clients choose.

/// A map keyed by names clients choose: seeded per process (foldhash), so nobody can
/// precompute colliding names (hash flooding).
pub type NameMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A set of names clients choose (see [`NameMap`]).
pub type NameSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
