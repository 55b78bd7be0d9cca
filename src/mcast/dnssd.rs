//! DNS-SD advertising and browsing of multicast streams (being written).
