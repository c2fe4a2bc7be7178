//! What `--from` names (an alias, or an index of the layout before aliases) and the one request
//! that moves the alias: `POST _aliases` with both actions, which ES applies atomically, so every
//! search sees either the old index or the new one, never neither.

use anyhow::{bail, Context, Result};
use elasticsearch::Elasticsearch;
use serde_json::{json, Value};

use crate::es::client::call;
use crate::es::model_info::recorded_fingerprint;

/// What `--from` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layout {
    /// An alias (what `setup` creates) pointing at this index.
    Alias { alias: String, index: String },
    /// A concrete index named like the alias clients use (made before setup created aliases).
    Index(String),
}

impl Layout {
    /// The name clients use.
    pub(crate) fn name(&self) -> &str {
        match self {
            Layout::Alias { alias, .. } => alias,
            Layout::Index(index) => index,
        }
    }

    /// The index that holds the documents now.
    pub(crate) fn index(&self) -> &str {
        match self {
            Layout::Alias { index, .. } => index,
            Layout::Index(index) => index,
        }
    }
}

/// `GET <name>/_mapping` answers with one key per concrete index: `name` itself for an index,
/// the index behind it for an alias. Returns the layout and the fingerprint the index recorded.
pub(crate) async fn resolve(
    client: &Elasticsearch,
    name: &str,
) -> Result<(Layout, Option<String>)> {
    let request = format!("GET {name}/_mapping");
    let names = [name];
    let indices = client.indices();
    let get = indices.get_mapping(elasticsearch::indices::IndicesGetMappingParts::Index(
        &names,
    ));
    let mapping: Value = call(&request, get.send())
        .await
        .with_context(|| format!("--from {name}: no such index or alias"))?;
    let layout = layout_of(name, &mapping)?;
    Ok((layout, recorded_fingerprint(&mapping)))
}

fn layout_of(name: &str, mapping: &Value) -> Result<Layout> {
    let concrete: Vec<&String> = mapping
        .as_object()
        .map(|indices| indices.keys().collect())
        .unwrap_or_default();
    match concrete.as_slice() {
        [one] if *one == name => Ok(Layout::Index(name.to_owned())),
        [one] => Ok(Layout::Alias {
            alias: name.to_owned(),
            index: (*one).clone(),
        }),
        [] => bail!("GET {name}/_mapping named no index"),
        many => bail!(
            "the alias {name} points at {} indices ({}); reindex moves an alias that points at exactly one",
            many.len(),
            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The `POST _aliases` actions that put `layout`'s name on `target`. For an old-layout index
/// the alias can only exist once the index of that name is gone, so `remove_index` deletes it
/// in the same atomic step (only with `replace_index`; `None` without).
pub(crate) fn move_actions(layout: &Layout, target: &str, replace_index: bool) -> Option<Value> {
    match layout {
        Layout::Alias { alias, index } => Some(json!({"actions": [
            {"remove": {"index": index, "alias": alias}},
            {"add": {"index": target, "alias": alias}},
        ]})),
        Layout::Index(index) if replace_index => Some(json!({"actions": [
            {"add": {"index": target, "alias": index}},
            {"remove_index": {"index": index}},
        ]})),
        Layout::Index(_) => None,
    }
}

/// Sends the actions. A `remove` of an alias that is no longer there (another run moved it) fails
/// the whole request, and nothing changes.
pub(crate) async fn apply(client: &Elasticsearch, actions: &Value) -> Result<()> {
    let answer: Value = call(
        "POST _aliases",
        client.indices().update_aliases().body(actions).send(),
    )
    .await?;
    // 8.14+ answer `errors: true` with per-action results when an action was skipped.
    if answer.get("acknowledged") != Some(&json!(true))
        || answer.get("errors") == Some(&json!(true))
    {
        bail!("POST _aliases was not applied: {answer}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_keys_tell_an_alias_from_an_index() {
        let alias = json!({"photos-clip-ab": {"mappings": {}}});
        assert_eq!(
            layout_of("photos", &alias).unwrap(),
            Layout::Alias {
                alias: "photos".to_owned(),
                index: "photos-clip-ab".to_owned()
            }
        );
        let index = json!({"photos": {"mappings": {}}});
        assert_eq!(
            layout_of("photos", &index).unwrap(),
            Layout::Index("photos".to_owned())
        );
        let two = json!({"a": {}, "b": {}});
        assert!(layout_of("photos", &two)
            .unwrap_err()
            .to_string()
            .contains("2 indices"));
    }

    #[test]
    fn moves_are_one_request_remove_and_add() {
        let alias = Layout::Alias {
            alias: "photos".to_owned(),
            index: "old".to_owned(),
        };
        assert_eq!(
            move_actions(&alias, "new", false).unwrap(),
            json!({"actions": [{"remove": {"index": "old", "alias": "photos"}}, {"add": {"index": "new", "alias": "photos"}}]})
        );
        let index = Layout::Index("photos".to_owned());
        assert_eq!(move_actions(&index, "new", false), None);
        assert_eq!(
            move_actions(&index, "new", true).unwrap()["actions"][1],
            json!({"remove_index": {"index": "photos"}})
        );
    }
}
