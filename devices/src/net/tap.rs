//! Linux TAP backend (being written).
