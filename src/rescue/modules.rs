//! Kernel modules the hardware asks for (being written).
