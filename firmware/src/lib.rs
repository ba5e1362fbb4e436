//! firmware (being written)
