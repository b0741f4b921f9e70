//! Counters for GET /metrics, in Prometheus' text format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use axum::response::Response;

use crate::api::ApiError;

/// Latency histogram bucket bounds, seconds.
const BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Bucket counts, sum of seconds, count.
type Histogram = ([u64; BUCKETS.len()], f64, u64);

#[derive(Default)]
pub struct Metrics {
    tokens: AtomicU64,
    /// Decode steps of the running batch, and the rows they ran (their sum).
    decode_steps: AtomicU64,
    decode_rows: AtomicU64,
    running: AtomicU64,
    /// (endpoint, status) → count.
    requests: Mutex<std::collections::BTreeMap<(String, u16), u64>>,
    /// endpoint → (bucket counts, sum, count).
    latency: Mutex<std::collections::BTreeMap<String, Histogram>>,
}

impl Metrics {
    pub fn add_tokens(&self, n: usize) {
        self.tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a decode step of `rows` sequences; `running` is the batch's size after it.
    pub fn add_step(&self, rows: usize, running: usize) {
        if rows > 0 {
            self.decode_steps.fetch_add(1, Ordering::Relaxed);
            self.decode_rows.fetch_add(rows as u64, Ordering::Relaxed);
        }
        self.running.store(running as u64, Ordering::Relaxed);
    }

    /// Counts a request and its latency (to the response head; streams continue after).
    pub fn observe(&self, endpoint: &str, r: &Result<Response, ApiError>, start: Instant) {
        let status = match r {
            Ok(resp) => resp.status().as_u16(),
            Err(e) => e.status.as_u16(),
        };
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint.to_string(), status)).or_insert(0) += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        if let Ok(mut l) = self.latency.lock() {
            let e = l
                .entry(endpoint.to_string())
                .or_insert(([0; BUCKETS.len()], 0.0, 0));
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    e.0[i] += 1;
                }
            }
            e.1 += secs;
            e.2 += 1;
        }
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
        out.push_str("# HELP rustformers_queue_depth Generations waiting or running.\n");
        out.push_str("# TYPE rustformers_queue_depth gauge\n");
        out.push_str(&format!("rustformers_queue_depth {queue}\n"));
        out.push_str("# HELP rustformers_request_seconds Time to the response head.\n");
        out.push_str("# TYPE rustformers_request_seconds histogram\n");
        if let Ok(l) = self.latency.lock() {
            for (e, (b, sum, count)) in l.iter() {
                for (i, bound) in BUCKETS.iter().enumerate() {
                    out.push_str(&format!(
                        "rustformers_request_seconds_bucket{{endpoint=\"{e}\",le=\"{bound}\"}} {}\n",
                        b[i]
                    ));
                }
                out.push_str(&format!(
                    "rustformers_request_seconds_bucket{{endpoint=\"{e}\",le=\"+Inf\"}} {count}\n"
                ));
                out.push_str(&format!(
                    "rustformers_request_seconds_sum{{endpoint=\"{e}\"}} {sum}\n"
                ));
                out.push_str(&format!(
                    "rustformers_request_seconds_count{{endpoint=\"{e}\"}} {count}\n"
                ));
            }
        }
        out
    }
}
