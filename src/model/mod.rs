//! Getting a model: everything between model files (local or on the Hugging Face hub) and a
//! bundle directory the engine can load. Depends on `engine` (for the bundle format and the
//! smoke test); the engine never depends on it.
//!
//! - `inspect.rs`: what an ONNX graph takes and returns, and which tensors the engine uses;
//! - `build.rs`: [`create_bundle`], shared by `model init` and `model pull`, and its smoke test;
//! - `install.rs`: staging beside the target and installing by renames;
//! - `catalogue.rs`: the models `pull` knows and the files each needs;
//! - `protocol.rs`, `checksum.rs`, `download.rs`: the hub's answers, its checksums, the client;
//! - `cache.rs`: the download cache on disk;
//! - `open_clip.rs`: [`read_export`], the settings of an open_clip export in Immich's layout;
//! - `pull.rs`: [`pull`], the catalogue plus the client plus [`create_bundle`].

mod build;
mod cache;
mod catalogue;
mod checksum;
mod download;
mod inspect;
mod install;
mod open_clip;
mod protocol;
mod pull;

pub use build::{create_bundle, BundleSpec, CreatedBundle, Family, Outcome};
pub use cache::cache_root;
pub use catalogue::{preset_table, HubFile, Role, DEFAULT_MODEL, DEFAULT_REVISION};
pub use checksum::Checksum;
pub use download::Fetched;
pub use inspect::TensorOverrides;
pub use open_clip::{read_export, OpenClipExport};
pub use protocol::DEFAULT_ENDPOINT;
pub use pull::{pull, PullRequest, Pulled};
