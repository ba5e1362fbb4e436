//! vmnet (being written)
