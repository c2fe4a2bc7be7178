//! Contract tests: one integration binary.
mod common;
mod errors;
mod golden;
mod hf;
mod openai;
mod ops;
