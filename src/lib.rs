//! Sightline: CLIP image and multilingual text embeddings for Elasticsearch's Inference API.
//!
//! Data flow:
//! ```text
//! HTTP body ─ http::{openai,hf} ─ Engine::parse_input (data URI / base64 / URL / text) ─┐
//! CLI files ─ cli::{embed,ingest} ──────────────────────────────────────────────────────┤
//!                                                                                        ▼
//!   engine::preprocess (decode, resize, crop, normalise)     engine::text (tokenize)
//!                              │                                        │
//!                   engine::batcher (one bounded queue per modality) ◀──┘
//!                              │
//!                   engine::worker (ONNX Runtime sessions) → L2-normalised vectors
//! ```
//! `url/` fetches URL inputs for the engine (off by default); `model/` inspects, builds and
//! downloads model bundles; `es/` talks to Elasticsearch (setup, bulk ingest, kNN search);
//! `sidecar` is the HTTP client of a running `sightline serve` (vectors for the CLI and the
//! gallery); `cli/` wires commands to all of them. Dependencies point one way: nothing below
//! `cli/` imports it, and `engine/` imports only `metrics`.

#![warn(unreachable_pub)]

pub mod cli;
pub mod engine;
pub mod es;
pub mod gallery;
pub mod http;
mod metrics;
pub mod model;
pub mod sidecar;
pub mod url;
