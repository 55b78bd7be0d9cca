//! The text menu (being written).
