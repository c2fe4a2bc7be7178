//! Every Prometheus metric: names, help texts and buckets live here and nowhere else.
//! Callers record through the functions below with plain string labels (the engine passes
//! `ErrorKind::label()` and `Modality::label()`), so this module depends on nothing of the crate
//! and the engine can report without a cycle; `/metrics` renders the registry.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    inputs: IntCounterVec,
    input_errors: IntCounterVec,
    stage_seconds: HistogramVec,
    batch_items: HistogramVec,
    queue_depth: IntGaugeVec,
    dropped: IntCounterVec,
    inferred: IntCounterVec,
    decode_warnings: IntCounterVec,
    query_cache: IntCounterVec,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        // 0.1 ms … ~52 s, doubling: covers a tokenizer call up to a stalled batch.
        let seconds = exponential_buckets(0.0001, 2.0, 20).expect("valid buckets");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "sightline_queue_depth",
                "Inputs admitted and not yet answered.",
            ),
            &["modality", "model"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(queue_depth.clone()))
            .expect("unique metric");
        Metrics {
            requests: counter(
                "sightline_requests_total",
                "HTTP requests by route and status code.",
                &["route", "status"],
            ),
            request_seconds: histogram(
                "sightline_request_seconds",
                "HTTP request latency by route.",
                &["route"],
                seconds.clone(),
            ),
            inputs: counter(
                "sightline_inputs_total",
                "Inputs received by modality and model.",
                &["modality", "model"],
            ),
            input_errors: counter(
                "sightline_input_errors_total",
                "Inputs that failed, by error class.",
                &["kind", "model"],
            ),
            stage_seconds: histogram(
                "sightline_stage_seconds",
                "Time per stage (decode+preprocess, tokenize, queue wait, inference) by modality.",
                &["stage", "modality", "model"],
                seconds,
            ),
            batch_items: histogram(
                "sightline_batch_items",
                "Inputs per inference batch.",
                &["modality", "model"],
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
            ),
            dropped: counter(
                "sightline_dropped_total",
                "Queued inputs never run: their caller disconnected or their deadline passed.",
                &["modality", "reason", "model"],
            ),
            inferred: counter(
                "sightline_inferred_total",
                "Inputs that went through the model, by modality and model.",
                &["modality", "model"],
            ),
            decode_warnings: counter(
                "sightline_decode_warnings_total",
                "Images decoded despite a recoverable defect the decoder warned about (libjpeg's \"Corrupt JPEG data: …\"), by format.",
                &["format"],
            ),
            query_cache: counter(
                "sightline_query_cache_total",
                "Text inputs looked up in the query cache, by model and result (`hit`, `miss`).",
                &["model", "result"],
            ),
            queue_depth,
            registry,
        }
    })
}

pub(crate) fn request(route: &str, status: u16, elapsed: Duration) {
    let m = metrics();
    m.requests
        .with_label_values(&[route, &status.to_string()])
        .inc();
    m.request_seconds
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
}

pub(crate) fn inputs(modality: &str, model: &str, n: usize) {
    metrics()
        .inputs
        .with_label_values(&[modality, model])
        .inc_by(n as u64);
}

/// One text input looked up in the query cache of `model`.
pub(crate) fn query_cache(model: &str, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    metrics()
        .query_cache
        .with_label_values(&[model, result])
        .inc();
}

/// One failed input; `kind` is the error class's label (`bad_input`, `overloaded`…).
pub(crate) fn input_error(kind: &str, model: &str) {
    metrics()
        .input_errors
        .with_label_values(&[kind, model])
        .inc();
}

pub(crate) fn stage_seconds(stage: &str, modality: &str, model: &str, elapsed: Duration) {
    metrics()
        .stage_seconds
        .with_label_values(&[stage, modality, model])
        .observe(elapsed.as_secs_f64());
}

/// One model run over `n` inputs.
pub(crate) fn batch_items(modality: &str, model: &str, n: usize) {
    let m = metrics();
    m.batch_items
        .with_label_values(&[modality, model])
        .observe(n as f64);
    m.inferred
        .with_label_values(&[modality, model])
        .inc_by(n as u64);
}

pub(crate) fn dropped(modality: &str, reason: &str, model: &str, n: usize) {
    if n > 0 {
        metrics()
            .dropped
            .with_label_values(&[modality, reason, model])
            .inc_by(n as u64);
    }
}

/// One image decoded although its decoder reported a recoverable defect.
pub(crate) fn decode_warning(format: &str) {
    metrics().decode_warnings.with_label_values(&[format]).inc();
}

pub(crate) fn queue_depth(modality: &str, model: &str, depth: usize) {
    metrics()
        .queue_depth
        .with_label_values(&[modality, model])
        .set(depth as i64);
}

/// The Prometheus text exposition of every metric.
pub(crate) fn render() -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&metrics().registry.gather(), &mut buf)
        .expect("text encoding into a Vec cannot fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_appear_in_the_exposition() {
        request("/v1/embeddings", 400, Duration::from_millis(3));
        input_error("bad_input", "m");
        queue_depth("image", "m", 5);
        let text = render();
        assert!(text.contains(r#"sightline_requests_total{route="/v1/embeddings",status="400"}"#));
        assert!(text.contains(r#"sightline_input_errors_total{kind="bad_input",model="m"}"#));
        assert!(text.contains(r#"sightline_queue_depth{modality="image",model="m"} 5"#));
    }

    /// Dashboards and alerts name these: each metric keeps its name, type and labels.
    #[test]
    fn every_metric_keeps_its_name_type_and_labels() {
        request("/embed", 200, Duration::from_millis(1));
        inputs("text", "m", 1);
        query_cache("m", true);
        query_cache("m", false);
        input_error("timeout", "m");
        stage_seconds("queue", "text", "m", Duration::from_millis(1));
        batch_items("text", "m", 3);
        dropped("text", "timeout", "m", 1);
        queue_depth("text", "m", 0);
        let text = render();
        for line in [
            "# TYPE sightline_requests_total counter",
            r#"sightline_requests_total{route="/embed",status="200"}"#,
            "# TYPE sightline_request_seconds histogram",
            r#"sightline_request_seconds_bucket{route="/embed",le="0.0001"}"#,
            "# TYPE sightline_inputs_total counter",
            r#"sightline_inputs_total{modality="text",model="m"}"#,
            "# TYPE sightline_query_cache_total counter",
            r#"sightline_query_cache_total{model="m",result="hit"}"#,
            r#"sightline_query_cache_total{model="m",result="miss"}"#,
            "# TYPE sightline_input_errors_total counter",
            r#"sightline_input_errors_total{kind="timeout",model="m"}"#,
            "# TYPE sightline_stage_seconds histogram",
            r#"sightline_stage_seconds_count{modality="text",model="m",stage="queue"}"#,
            "# TYPE sightline_batch_items histogram",
            r#"sightline_batch_items_bucket{modality="text",model="m",le="4"}"#,
            "# TYPE sightline_dropped_total counter",
            r#"sightline_dropped_total{modality="text",model="m",reason="timeout"}"#,
            "# TYPE sightline_queue_depth gauge",
            r#"sightline_queue_depth{modality="text",model="m"} 0"#,
            "# TYPE sightline_inferred_total counter",
            r#"sightline_inferred_total{modality="text",model="m"}"#,
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
    }
}
