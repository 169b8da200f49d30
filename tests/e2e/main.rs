//! End-to-end tests: the real `portcullis` binary, driven the way users drive it.

mod cli_check;
mod cli_explain;
mod support;
