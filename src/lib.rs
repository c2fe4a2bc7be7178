//! Sightline: CLIP image and multilingual text embeddings for Elasticsearch's Inference API.
//!
//! Data flow:
//! ```text
//! HTTP body ─ http::{openai,hf} ─ engine::input (data URI / base64 / text) ─┐
//! CLI files ─ cli::{embed,ingest} ─────────────────────────────────────────┤
//!                                                                           ▼
//!   engine::preprocess (decode, resize, crop, normalise)  engine::text (tokenize)
//!                                 │                               │
//!                      engine::batcher (one bounded queue per modality)
//!                                 │
//!                      engine::worker (ONNX Runtime sessions) → L2-normalised vectors
//! ```
//! `es/` talks to Elasticsearch (setup, bulk ingest, kNN search); `cli/` wires commands to both.

#![warn(unreachable_pub)]

pub mod cli;
pub mod engine;
pub mod es;
pub mod gallery;
pub mod http;
pub mod metrics;
pub mod model;
pub mod url;
