//! Which of Sightline's two ways of getting vectors into a cluster fits it, from its licence
//! (`GET _license`) and version (contract §12 #1):
//! - `pipeline`: the cluster calls the sidecar itself through an inference endpoint (ingest
//!   pipeline at index time, `query_vector_builder` at query time). Needs the Inference API,
//!   i.e. an **enterprise** or **trial** licence (`InferencePlugin.INFERENCE_API_FEATURE` is
//!   `License.OperationMode.ENTERPRISE`) on **8.12+**;
//! - `vectors`: the CLI gets vectors from the sidecar over HTTP and sends them finished
//!   (`dense_vector` values at index time, `knn.query_vector` at query time). Works on every
//!   licence and on 7.x/8.x/9.x; index template and index only.
//!
//! The choice is a pure function of [`Cluster`] and [`LicenseInfo`], tested per licence and line.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use elasticsearch::http::StatusCode;
use elasticsearch::Elasticsearch;

use super::body::{LicenseInfo, LicenseResponse};
use super::client::call;
use super::version::Cluster;

/// How vectors reach the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Pipeline,
    Vectors,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Pipeline => "pipeline",
            Mode::Vectors => "vectors",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `--mode`: a mode, or `auto` (`None`).
pub(crate) fn parse_mode_flag(text: &str) -> Result<Option<Mode>> {
    match text {
        "auto" => Ok(None),
        other => other.parse().map(Some),
    }
}

impl FromStr for Mode {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "pipeline" => Ok(Mode::Pipeline),
            "vectors" => Ok(Mode::Vectors),
            other => bail!("unknown mode {other:?}: expected auto, pipeline or vectors"),
        }
    }
}

/// A mode and the sentence that explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModeChoice {
    pub(crate) mode: Mode,
    pub(crate) why: String,
}

/// `GET _license`. `None` where the cluster has no licence API: an OSS build (7.x `-oss`
/// answers 400 "no handler"), or Serverless, which has no licences.
pub(crate) async fn read_license(client: &Elasticsearch) -> Result<Option<LicenseInfo>> {
    let license = client.license();
    match call::<LicenseResponse>("GET _license", license.get().send()).await {
        Ok(answer) => Ok(answer.license),
        Err(err)
            if matches!(
                err.status(),
                Some(StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::GONE)
            ) =>
        {
            Ok(None)
        }
        Err(err) => Err(err.into()),
    }
}

/// The licence as one phrase: `basic (active)`.
pub(crate) fn describe_license(license: Option<&LicenseInfo>) -> String {
    match license {
        Some(license) => format!("{} licence ({})", license.kind, license.status),
        None => "no licence API".to_owned(),
    }
}

/// Whether the licence covers the Inference API: an active enterprise or trial licence (trial
/// enables every feature).
pub(crate) fn license_allows_inference(license: Option<&LicenseInfo>) -> bool {
    license.is_some_and(|license| {
        license.status == "active" && matches!(license.kind.as_str(), "enterprise" | "trial")
    })
}

/// Picks the mode for `cluster` and `license`; `requested` is `--mode` (`None` for auto). Asking
/// for `pipeline` where it cannot work is an error that names the licence or version.
pub(crate) fn choose_mode(
    cluster: &Cluster,
    license: Option<&LicenseInfo>,
    requested: Option<Mode>,
) -> Result<ModeChoice> {
    let licence_text = describe_license(license);
    // Serverless has no licence API and always has the Inference API.
    let licensed = cluster.serverless || license_allows_inference(license);
    let pipeline_problem = if !cluster.has_inference_api() {
        Some(format!(
            "Elasticsearch {} has no Inference API (it needs 8.12+)",
            cluster.version
        ))
    } else if !licensed {
        Some(format!(
            "the cluster's {licence_text} does not cover the Inference API (it needs an active enterprise or trial licence)"
        ))
    } else {
        None
    };
    match (requested, pipeline_problem) {
        (Some(Mode::Pipeline), Some(problem)) => bail!(
            "--mode pipeline cannot work here: {problem}; use --mode vectors (or auto), where the CLI gets vectors from the sidecar and sends them finished"
        ),
        (Some(Mode::Pipeline), None) | (None, None) => Ok(ModeChoice {
            mode: Mode::Pipeline,
            why: format!(
                "Elasticsearch {} with {}{}: the cluster can call the sidecar through the Inference API",
                cluster.version,
                if cluster.serverless { "Serverless".to_owned() } else { licence_text },
                if requested.is_some() { " (--mode pipeline)" } else { "" }
            ),
        }),
        (Some(Mode::Vectors), _) => Ok(ModeChoice {
            mode: Mode::Vectors,
            why: format!(
                "--mode vectors on Elasticsearch {} with {licence_text}",
                cluster.version
            ),
        }),
        (None, Some(problem)) => Ok(ModeChoice {
            mode: Mode::Vectors,
            why: problem,
        }),
    }
}

/// What `ingest` and `search` will do in `mode`, for `setup` to print.
pub(crate) fn consequences(mode: Mode, cluster: &Cluster, index: &str) -> Vec<String> {
    let vectors_as = if cluster.accepts_base64_vectors() {
        "base64 dense_vector values (9.3+)"
    } else {
        "float arrays"
    };
    let knn = cluster.knn_form().describe();
    let mut lines = vec![format!(
        "ingest PATH --index {index}: embeds through the sidecar (--sidecar-url) and sends vectors as {vectors_as}"
    )];
    match mode {
        Mode::Pipeline => {
            lines[0].push_str("; --via-pipeline sends images through the ingest pipeline instead");
            lines.push(format!(
                "search --index {index} --text/--image: query_vector_builder through the -search endpoint (priority lane); --mode vectors embeds through the sidecar instead ({knn})"
            ));
        }
        Mode::Vectors => lines.push(format!(
            "search --index {index} --text/--image: embeds the query through the sidecar (priority lane), {knn}; --print gives the request for Kibana with the vector filled in"
        )),
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::es::version::EsVersion;

    fn cluster(text: &str) -> Cluster {
        Cluster::new(text.parse::<EsVersion>().unwrap())
    }

    fn license(kind: &str, status: &str) -> LicenseInfo {
        LicenseInfo {
            kind: kind.to_owned(),
            status: status.to_owned(),
        }
    }

    #[test]
    fn auto_picks_pipeline_only_for_enterprise_or_trial_on_8_12_plus() {
        for version in ["8.12.1", "8.15.0", "8.19.0", "9.1.0", "9.3.0"] {
            for kind in ["enterprise", "trial"] {
                let choice =
                    choose_mode(&cluster(version), Some(&license(kind, "active")), None).unwrap();
                assert_eq!(choice.mode, Mode::Pipeline, "{version} {kind}");
                assert!(choice.why.contains(kind), "{}", choice.why);
            }
            for kind in ["basic", "gold", "platinum", "standard"] {
                let choice =
                    choose_mode(&cluster(version), Some(&license(kind, "active")), None).unwrap();
                assert_eq!(choice.mode, Mode::Vectors, "{version} {kind}");
                assert!(choice.why.contains(kind), "{}", choice.why);
            }
            let expired = choose_mode(
                &cluster(version),
                Some(&license("enterprise", "expired")),
                None,
            )
            .unwrap();
            assert_eq!(expired.mode, Mode::Vectors);
            assert!(expired.why.contains("expired"), "{}", expired.why);
        }
        let old = choose_mode(&cluster("8.11.4"), Some(&license("trial", "active")), None).unwrap();
        assert_eq!(old.mode, Mode::Vectors);
        assert!(old.why.contains("8.12"), "{}", old.why);
        let oss = choose_mode(&cluster("7.17.0"), None, None).unwrap();
        assert_eq!(oss.mode, Mode::Vectors);
        let mut serverless = cluster("8.11.0");
        serverless.serverless = true;
        assert_eq!(
            choose_mode(&serverless, None, None).unwrap().mode,
            Mode::Pipeline
        );
    }

    #[test]
    fn asking_for_pipeline_where_it_cannot_work_names_the_licence() {
        let err = choose_mode(
            &cluster("9.1.0"),
            Some(&license("platinum", "active")),
            Some(Mode::Pipeline),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("platinum licence (active)"), "{err}");
        assert!(err.contains("--mode vectors"), "{err}");
        let err = choose_mode(
            &cluster("8.11.0"),
            Some(&license("enterprise", "active")),
            Some(Mode::Pipeline),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("8.12"), "{err}");
        // vectors is always allowed
        let forced = choose_mode(
            &cluster("9.1.0"),
            Some(&license("enterprise", "active")),
            Some(Mode::Vectors),
        )
        .unwrap();
        assert_eq!(forced.mode, Mode::Vectors);
    }

    #[test]
    fn mode_flag_parses() {
        assert_eq!(parse_mode_flag("auto").unwrap(), None);
        assert_eq!(parse_mode_flag("vectors").unwrap(), Some(Mode::Vectors));
        assert!(parse_mode_flag("semantic").is_err());
    }
}
