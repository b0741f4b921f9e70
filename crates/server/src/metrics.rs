//! Counters for GET /metrics, in Prometheus' text format.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::response::Response;

use crate::api::ApiError;

/// Request latency bucket bounds, seconds.
const LATENCY_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Time-to-first-token bucket bounds, seconds (finer: a small model's first token comes
/// in milliseconds).
const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One labelled series of a histogram: cumulative bucket counts, sum of seconds, count.
#[derive(Debug, Clone)]
struct Series {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A Prometheus histogram with an `endpoint` label.
struct Histogram {
    bounds: &'static [f64],
    series: Mutex<BTreeMap<String, Series>>,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    fn observe(&self, endpoint: &str, secs: f64) {
        let Ok(mut m) = self.series.lock() else {
            return;
        };
        let s = m.entry(endpoint.to_string()).or_insert_with(|| Series {
            buckets: vec![0; self.bounds.len()],
            sum: 0.0,
            count: 0,
        });
        for (i, b) in self.bounds.iter().enumerate() {
            if secs <= *b {
                s.buckets[i] += 1;
            }
        }
        s.sum += secs;
        s.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        let Ok(m) = self.series.lock() else {
            return;
        };
        for (e, s) in m.iter() {
            for (bound, n) in self.bounds.iter().zip(&s.buckets) {
                out.push_str(&format!(
                    "{name}_bucket{{endpoint=\"{e}\",le=\"{bound}\"}} {n}\n"
                ));
            }
            out.push_str(&format!(
                "{name}_bucket{{endpoint=\"{e}\",le=\"+Inf\"}} {}\n",
                s.count
            ));
            out.push_str(&format!("{name}_sum{{endpoint=\"{e}\"}} {}\n", s.sum));
            out.push_str(&format!("{name}_count{{endpoint=\"{e}\"}} {}\n", s.count));
        }
    }
}

/// The server's counters, gauges and histograms.
pub struct Metrics {
    tokens: AtomicU64,
    /// endpoint → prompt tokens (generations: a request's prompt once, whatever its `n`,
    /// when it is queued; embeddings: the tokens of every input, once embedded).
    prompt_tokens: Mutex<BTreeMap<String, u64>>,
    /// Decode steps of the running batch, and the rows they ran (their sum).
    decode_steps: AtomicU64,
    decode_rows: AtomicU64,
    running: AtomicU64,
    /// (endpoint, status) → count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Request arrival to the response head: a non-streamed response's whole time, a
    /// stream's start only (see `stream`).
    latency: Histogram,
    /// Streams: request arrival to the stream's end (its `[DONE]`, or the client gone).
    stream: Histogram,
    /// Request arrival to the first generated token of the request (streamed or not).
    ttft: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            tokens: AtomicU64::new(0),
            prompt_tokens: Mutex::new(BTreeMap::new()),
            decode_steps: AtomicU64::new(0),
            decode_rows: AtomicU64::new(0),
            running: AtomicU64::new(0),
            requests: Mutex::new(BTreeMap::new()),
            latency: Histogram::new(LATENCY_BUCKETS),
            stream: Histogram::new(LATENCY_BUCKETS),
            ttft: Histogram::new(TTFT_BUCKETS),
        }
    }
}

impl Metrics {
    pub fn add_tokens(&self, n: usize) {
        self.tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts the prompt tokens of an accepted request.
    pub fn add_prompt_tokens(&self, endpoint: &str, n: usize) {
        if let Ok(mut m) = self.prompt_tokens.lock() {
            *m.entry(endpoint.to_string()).or_insert(0) += n as u64;
        }
    }

    /// Counts a decode step of `rows` sequences; `running` is the batch's size after it.
    pub fn add_step(&self, rows: usize, running: usize) {
        if rows > 0 {
            self.decode_steps.fetch_add(1, Ordering::Relaxed);
            self.decode_rows.fetch_add(rows as u64, Ordering::Relaxed);
        }
        self.running.store(running as u64, Ordering::Relaxed);
    }

    /// Counts a request and its latency to the response head (a stream's end is
    /// `observe_stream`'s).
    pub fn observe(&self, endpoint: &str, r: &Result<Response, ApiError>, start: Instant) {
        let status = match r {
            Ok(resp) => resp.status().as_u16(),
            Err(e) => e.status.as_u16(),
        };
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint.to_string(), status)).or_insert(0) += 1;
        }
        self.latency
            .observe(endpoint, start.elapsed().as_secs_f64());
    }

    /// A stream's whole duration, from the request's arrival to its last event.
    pub fn observe_stream(&self, endpoint: &str, took: Duration) {
        self.stream.observe(endpoint, took.as_secs_f64());
    }

    /// A request's time to its first generated token.
    pub fn observe_ttft(&self, endpoint: &str, took: Duration) {
        self.ttft.observe(endpoint, took.as_secs_f64());
    }

    pub fn render(&self, queue: usize) -> String {
        let mut out = String::new();
        out.push_str("# HELP rustformers_requests_total Requests by endpoint and status.\n");
        out.push_str("# TYPE rustformers_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((e, s), n) in m.iter() {
                out.push_str(&format!(
                    "rustformers_requests_total{{endpoint=\"{e}\",status=\"{s}\"}} {n}\n"
                ));
            }
        }
        out.push_str("# HELP rustformers_generated_tokens_total Tokens generated.\n");
        out.push_str("# TYPE rustformers_generated_tokens_total counter\n");
        out.push_str(&format!(
            "rustformers_generated_tokens_total {}\n",
            self.tokens.load(Ordering::Relaxed)
        ));
        out.push_str(
            "# HELP rustformers_prompt_tokens_total Prompt tokens (a queued generation \
             request's prompt once, whatever its n; every input of an embeddings request).\n",
        );
        out.push_str("# TYPE rustformers_prompt_tokens_total counter\n");
        if let Ok(m) = self.prompt_tokens.lock() {
            for (e, n) in m.iter() {
                out.push_str(&format!(
                    "rustformers_prompt_tokens_total{{endpoint=\"{e}\"}} {n}\n"
                ));
            }
        }
        out.push_str("# HELP rustformers_decode_steps_total Decode steps of the running batch.\n");
        out.push_str("# TYPE rustformers_decode_steps_total counter\n");
        out.push_str(&format!(
            "rustformers_decode_steps_total {}\n",
            self.decode_steps.load(Ordering::Relaxed)
        ));
        out.push_str(
            "# HELP rustformers_decode_rows_total Sequences run by those steps (summed: \
             divided by the steps, the mean batch size).\n",
        );
        out.push_str("# TYPE rustformers_decode_rows_total counter\n");
        out.push_str(&format!(
            "rustformers_decode_rows_total {}\n",
            self.decode_rows.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP rustformers_running_sequences Sequences in the running batch.\n");
        out.push_str("# TYPE rustformers_running_sequences gauge\n");
        out.push_str(&format!(
            "rustformers_running_sequences {}\n",
            self.running.load(Ordering::Relaxed)
        ));
        out.push_str(
            "# HELP rustformers_queue_depth Generations (each of a request's n) and \
             embeddings requests waiting or running.\n",
        );
        out.push_str("# TYPE rustformers_queue_depth gauge\n");
        out.push_str(&format!("rustformers_queue_depth {queue}\n"));
        self.latency.render(
            &mut out,
            "rustformers_request_seconds",
            "Request arrival to the response head (streams: to their first byte; their \
             whole duration is rustformers_stream_seconds).",
        );
        self.stream.render(
            &mut out,
            "rustformers_stream_seconds",
            "Streamed responses, request arrival to the stream's end ([DONE] or the client \
             gone).",
        );
        self.ttft.render(
            &mut out,
            "rustformers_time_to_first_token_seconds",
            "Request arrival to the request's first generated token, streamed or not.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let m = Metrics::default();
        m.observe_ttft("chat", Duration::from_millis(20));
        m.observe_ttft("chat", Duration::from_millis(300));
        m.observe_ttft("completions", Duration::from_secs(100));
        m.add_prompt_tokens("chat", 7);
        m.add_prompt_tokens("chat", 5);
        let text = m.render(3);
        let line = |prefix: &str| -> String {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
                .unwrap_or_else(|| panic!("no `{prefix}` in\n{text}"))
        };
        let h = "rustformers_time_to_first_token_seconds";
        assert_eq!(
            line(&format!("{h}_bucket{{endpoint=\"chat\",le=\"0.01\"}} ")),
            "0"
        );
        assert_eq!(
            line(&format!("{h}_bucket{{endpoint=\"chat\",le=\"0.025\"}} ")),
            "1"
        );
        assert_eq!(
            line(&format!("{h}_bucket{{endpoint=\"chat\",le=\"0.5\"}} ")),
            "2"
        );
        assert_eq!(
            line(&format!("{h}_bucket{{endpoint=\"chat\",le=\"+Inf\"}} ")),
            "2"
        );
        assert_eq!(line(&format!("{h}_count{{endpoint=\"chat\"}} ")), "2");
        let sum: f64 = line(&format!("{h}_sum{{endpoint=\"chat\"}} "))
            .parse()
            .unwrap();
        assert!((sum - 0.32).abs() < 1e-9, "{sum}");
        // Above the last bound: only in +Inf.
        assert_eq!(
            line(&format!(
                "{h}_bucket{{endpoint=\"completions\",le=\"30\"}} "
            )),
            "0"
        );
        assert_eq!(
            line(&format!(
                "{h}_bucket{{endpoint=\"completions\",le=\"+Inf\"}} "
            )),
            "1"
        );
        assert_eq!(
            line("rustformers_prompt_tokens_total{endpoint=\"chat\"} "),
            "12"
        );
        assert_eq!(line("rustformers_queue_depth "), "3");
        assert!(text.contains("# TYPE rustformers_stream_seconds histogram"));
    }
}
