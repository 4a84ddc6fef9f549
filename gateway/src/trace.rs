//! Distributed tracing: W3C trace context in and out, spans exported over OTLP.
//!
//! With `[telemetry] otlp` set, each request continues the trace of an incoming
//! `traceparent` (its sampled flag decides) or starts one (sampled at `sample_ratio`), and
//! records a span tree:
//!
//! ```text
//! warden.request (server)
//! ├── warden.route
//! ├── warden.policy     one per plugin: warden.plugin, warden.verdict
//! ├── warden.secrets    names of the injected headers, never a value
//! └── warden.upstream   one per attempt (client): server.address, warden.retry
//! ```
//!
//! The upstream receives a `traceparent` naming its attempt's span. Without `otlp`, no
//! span is made and headers pass through untouched; an incoming trace id still reaches
//! the access log.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    SpanKind, Status, TraceContextExt, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::config::OtlpConfig;

/// The exporter and tracer for one `[telemetry] otlp` setting. Dropping the last handle
/// flushes and stops the exporter on a thread of its own (the flush blocks).
pub struct Tracing {
    config: OtlpConfig,
    tracer: SdkTracer,
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("endpoint", &self.config.endpoint)
            .finish()
    }
}

impl Tracing {
    /// Start exporting to the configured collector. Spans are batched and sent from a
    /// background thread; the request path only queues them.
    pub fn start(config: &OtlpConfig) -> Result<Arc<Tracing>, String> {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(config.traces_url())
            .with_timeout(config.timeout)
            .build()
            .map_err(|e| format!("OTLP exporter: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("warden");
        Ok(Arc::new(Tracing {
            config: config.clone(),
            tracer,
            provider: Some(provider),
        }))
    }

    /// The setting this exporter was built from (a reload with the same one keeps it).
    pub fn config(&self) -> &OtlpConfig {
        &self.config
    }

    /// Export what is buffered and stop. Blocks: call from a blocking thread.
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider {
            let _ = p.shutdown();
        }
    }

    /// Begin the server span of a request, continuing `headers`' trace context.
    pub fn begin(&self, headers: &HeaderMap, method: &http::Method) -> RequestTrace {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let now = SystemTime::now();
        let span = self
            .tracer
            .span_builder("warden.request")
            .with_kind(SpanKind::Server)
            .with_start_time(now)
            .with_attributes([KeyValue::new(
                "http.request.method",
                method.as_str().to_string(),
            )])
            .start_with_context(&self.tracer, &parent);
        RequestTrace {
            tracer: self.tracer.clone(),
            cx: parent.with_span(span),
            wall: now,
            start: Instant::now(),
        }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            // Shutting down waits for the export thread; never on a runtime worker.
            let _ = std::thread::Builder::new()
                .name("warden-otlp-stop".into())
                .spawn(move || {
                    let _ = p.shutdown();
                });
        }
    }
}

/// One request's trace: its server span, and the child spans hung under it.
pub struct RequestTrace {
    tracer: SdkTracer,
    cx: Context,
    wall: SystemTime,
    start: Instant,
}

/// An open child span (an upstream attempt).
pub struct OpenSpan(Context);

impl RequestTrace {
    /// The trace id, for the access log.
    pub fn trace_id(&self) -> TraceId {
        self.cx.span().span_context().trace_id()
    }

    fn at(&self, t: Instant) -> SystemTime {
        self.wall + t.saturating_duration_since(self.start)
    }

    /// Record a finished child span that ran from `started` to `ended`.
    pub fn record(
        &self,
        name: &'static str,
        started: Instant,
        ended: Instant,
        attributes: Vec<KeyValue>,
    ) {
        if !self.cx.span().is_recording() {
            return;
        }
        let mut span = self
            .tracer
            .span_builder(name)
            .with_start_time(self.at(started))
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &self.cx);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, self.at(ended));
    }

    /// Open the span of one upstream attempt and write its context into the request
    /// headers (`traceparent`, `tracestate`), replacing the client's.
    pub fn upstream_attempt(
        &self,
        headers: &mut HeaderMap,
        upstream: &str,
        endpoint: &str,
        retry: u32,
    ) -> OpenSpan {
        let span = self
            .tracer
            .span_builder("warden.upstream")
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("warden.upstream", upstream.to_string()),
                KeyValue::new("server.address", endpoint.to_string()),
                KeyValue::new("warden.retry", i64::from(retry)),
            ])
            .start_with_context(&self.tracer, &self.cx);
        let cx = self.cx.with_span(span);
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
        OpenSpan(cx)
    }

    /// Set attributes on the request span.
    pub fn annotate(&self, attributes: Vec<KeyValue>) {
        let span = self.cx.span();
        if span.is_recording() {
            span.set_attributes(attributes);
        }
    }

    /// End the request span with the status sent to the client.
    pub fn finish(self, status: u16, flag: Option<&str>) {
        let span = self.cx.span();
        if !span.is_recording() {
            return;
        }
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(f) = flag {
            span.set_attribute(KeyValue::new("warden.flag", f.to_string()));
        }
        if status >= 500 {
            span.set_status(Status::error(flag.unwrap_or("server error").to_string()));
        }
        span.end();
    }
}

impl OpenSpan {
    /// End the attempt: the upstream's status, or why there was none.
    pub fn end(self, outcome: Result<u16, &'static str>) {
        let span = self.0.span();
        match outcome {
            Ok(status) => {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                if status >= 500 {
                    span.set_status(Status::error(format!("upstream answered {status}")));
                }
            }
            Err(why) => {
                span.set_attribute(KeyValue::new("error.type", why));
                span.set_status(Status::error(why));
            }
        }
        span.end();
    }
}

/// The trace id of an incoming `traceparent`, when tracing is off and the access log still
/// wants it.
pub fn incoming_trace_id(headers: &HeaderMap) -> Option<TraceId> {
    if !headers.contains_key("traceparent") {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incoming_traceparent_gives_its_trace_id_and_junk_gives_none() {
        let mut h = HeaderMap::new();
        assert_eq!(incoming_trace_id(&h), None);
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            incoming_trace_id(&h).unwrap().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        h.insert("traceparent", "00-zz-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(incoming_trace_id(&h), None);
        h.insert(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            incoming_trace_id(&h),
            None,
            "an all-zero trace id is invalid"
        );
    }
}
