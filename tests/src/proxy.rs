//! The fault proxy between two urbd nodes (being written).
