//! The server's property-list configuration (being written).
