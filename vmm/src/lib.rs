//! vmm (being written)
