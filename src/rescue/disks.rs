//! Disks from sysfs, and the `auto` target choice (being written).
