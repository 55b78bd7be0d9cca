//! `reimage.*` kernel command-line parameters (being written).
