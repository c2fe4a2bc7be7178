//! The models one server answers for: one [`Engine`] per bundle, each with its own workers and
//! queues, chosen per request by name. The first is the default: a request that names no model
//! gets it, and `/info` describes it at the top level as a one-model server did.
//!
//! A name matches a model's manifest `name` exactly, which is what `/info` reports and what
//! `setup` writes into the endpoint's `model_id`. With one model served, every name is answered
//! by it, as before several could be served: endpoints whose `model_id` was written by hand keep
//! working. With several, an unknown name is refused, listing the names served.

use std::sync::Arc;

use crate::engine::Engine;

/// The engines a router serves, in the order given; never empty, names unique.
#[derive(Clone)]
pub struct Models {
    engines: Arc<[Engine]>,
}

impl Models {
    /// The models to serve, the first being the default. Two bundles with one name cannot be
    /// told apart by a request, so that is an error, as is an empty list.
    pub fn new(engines: Vec<Engine>) -> anyhow::Result<Models> {
        anyhow::ensure!(!engines.is_empty(), "no model to serve");
        for (i, engine) in engines.iter().enumerate() {
            let name = &engine.info().name;
            anyhow::ensure!(
                engines[..i].iter().all(|e| &e.info().name != name),
                "two model bundles are named `{name}`: a request chooses its model by name, so each must have its own (`name` in sightline.json)"
            );
        }
        Ok(Models {
            engines: engines.into(),
        })
    }

    /// The model a request that names none gets.
    pub(crate) fn first(&self) -> &Engine {
        &self.engines[0]
    }

    pub(crate) fn all(&self) -> &[Engine] {
        &self.engines
    }

    /// The model named `name` (none or empty: the first), or a message listing the names served.
    pub(crate) fn select(&self, name: Option<&str>) -> Result<&Engine, String> {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return Ok(self.first());
        };
        if let Some(engine) = self.engines.iter().find(|e| e.info().name == name) {
            return Ok(engine);
        }
        if self.engines.len() == 1 {
            return Ok(self.first());
        }
        let served: Vec<String> = self
            .engines
            .iter()
            .map(|e| format!("`{}`", e.info().name))
            .collect();
        Err(format!(
            "unknown model `{name}`: this server serves {}",
            served.join(", ")
        ))
    }
}

impl From<Engine> for Models {
    fn from(engine: Engine) -> Models {
        Models {
            engines: Arc::new([engine]),
        }
    }
}
