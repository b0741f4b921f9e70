//! `rustformers serve`: an OpenAI-compatible HTTP API (axum on tokio) over a
//! text-generation model and/or an embedding model.
//!
//! Endpoints: POST /v1/chat/completions (chat template, streaming SSE or not),
//! POST /v1/completions, POST /v1/embeddings, GET /v1/models, GET /health, GET /metrics
//! (Prometheus text: requests, prompt and generated tokens, queue depth, batch counters,
//! histograms of the time to the response head, of streams' whole duration and of the
//! time to first token; see `Metrics`). Errors use OpenAI's JSON shape. Generation runs
//! on one worker thread with continuous batching (`ContinuousBatcher`): requests join
//! the running batch at the next decode step, up to `max_batch_size` at once, and their
//! prompts run one chunk per step; more wait in a bounded queue (a full queue answers 429; a request
//! for more completions than the queue holds, 400). Embeddings requests run beside the
//! worker and take one place each in the same queue. A client that disconnects has its
//! sequence cancelled and its cache rows freed. SIGTERM / Ctrl-C finish in-flight
//! requests (new ones are refused with 503), then exit; `serve_on` returns once the
//! worker thread has exited.

pub mod api;
mod metrics;
mod stop;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use rustformers_core::AutoTokenizer;
use rustformers_generation::{BatchEvent, FinishReason, GenerationConfig, SeqId, SequenceOptions};
use rustformers_generation::{TextStreamer, TokenLogprobs};
use rustformers_pipelines::{FeatureExtractionPipeline, Params, TextGenerationPipeline};

use api::MAX_EMBEDDING_INPUTS;
use api::{ApiError, ChatRequest, CompletionRequest, EmbeddingRequest, Endpoint, GenSettings};
pub use metrics::Metrics;

/// What `serve` runs with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Generations (each of a request's `n`) and embeddings requests waiting or running
    /// beyond this are refused with 429; a request for more than this many completions
    /// can never be served (400).
    pub max_queue: usize,
    /// Sequences the continuous batcher runs together (each decode step is one forward
    /// pass over all of them); further requests wait in the queue.
    pub max_batch_size: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            max_queue: 64,
            max_batch_size: 8,
        }
    }
}

/// The loaded models.
pub struct Models {
    /// A text-generation model and the id clients name it by.
    pub generator: Option<(String, Arc<TextGenerationPipeline>)>,
    /// An embedding model, its id and tokenizer (for usage counts).
    pub embedder: Option<(String, Arc<FeatureExtractionPipeline>, Arc<AutoTokenizer>)>,
}

/// One generation on the worker thread: the prompt's ids and the generation config,
/// prepared by the handler.
struct Job {
    ids: Vec<u32>,
    config: GenerationConfig,
    stop: Vec<String>,
    logprobs: Option<usize>,
    events: mpsc::UnboundedSender<Event>,
    /// Shared by the request's `n` jobs: its first token is timed once.
    first: Arc<FirstToken>,
}

/// A request's time to first token, recorded by the worker when any of its sequences
/// generates its first token.
struct FirstToken {
    endpoint: &'static str,
    start: Instant,
    seen: AtomicBool,
}

impl FirstToken {
    fn observe(&self, metrics: &Metrics) {
        if !self.seen.swap(true, Ordering::SeqCst) {
            metrics.observe_ttft(self.endpoint, self.start.elapsed());
        }
    }
}

/// A generated token's log-probability and the most likely alternatives, as text.
#[derive(Debug, Clone)]
struct TokenLp {
    token: String,
    logprob: f32,
    top: Vec<(String, f32)>,
}

/// What the worker reports for a job.
enum Event {
    /// New text and the log-probabilities of the tokens it came from (when asked).
    Text(String, Vec<TokenLp>),
    Done {
        completion_tokens: usize,
        finish_reason: &'static str,
    },
    Failed(String),
}

struct AppState {
    models: Models,
    config: ServerConfig,
    /// The worker's queue; taken (closed) when the server stops, so the worker exits.
    jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    /// False once the worker thread has exited (returned or panicked).
    worker_alive: AtomicBool,
    pending: AtomicUsize,
    metrics: Arc<Metrics>,
    shutting_down: AtomicBool,
}

/// Runs the server until SIGTERM or Ctrl-C; in-flight requests finish first. The signal
/// handlers are installed before the port is bound, so a signal sent once the server
/// answers always drains it (never the default action, which kills the process).
pub async fn serve(models: Models, config: ServerConfig) -> std::io::Result<()> {
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port)).await?;
    serve_on(listener, models, config, shutdown).await
}

/// Serves on a bound listener until `shutdown` completes (tests pass their own).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    models: Models,
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (state, rx) = app_state(models, config);
    let worker = spawn_worker(rx, state.clone())?;
    let app = router(state.clone());
    tracing::info!("listening on {}", listener.local_addr()?);
    let drain = state.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            drain.shutting_down.store(true, Ordering::SeqCst);
        })
        .await;
    // Every connection has closed: close the queue, so that the worker finishes what it
    // still holds (sequences of clients that left are cancelled) and exits.
    close_queue(&state);
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    served
}

/// The shared state, and the receiving end of its job queue (for the worker).
fn app_state(
    models: Models,
    config: ServerConfig,
) -> (Arc<AppState>, std::sync::mpsc::Receiver<Job>) {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let state = Arc::new(AppState {
        models,
        config,
        jobs: Mutex::new(Some(tx)),
        worker_alive: AtomicBool::new(true),
        pending: AtomicUsize::new(0),
        metrics: Arc::new(Metrics::default()),
        shutting_down: AtomicBool::new(false),
    });
    (state, rx)
}

fn close_queue(state: &AppState) {
    if let Ok(mut jobs) = state.jobs.lock() {
        jobs.take();
    }
}

/// Marks the worker as gone when its thread ends, however it ends (a panic included).
struct WorkerAlive(Arc<AppState>);

impl Drop for WorkerAlive {
    fn drop(&mut self) {
        self.0.worker_alive.store(false, Ordering::SeqCst);
    }
}

/// Starts the generation worker thread; it exits once the queue is closed and its
/// batch is empty.
fn spawn_worker(
    rx: std::sync::mpsc::Receiver<Job>,
    state: Arc<AppState>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let generator = state.models.generator.as_ref().map(|(_, p)| p.clone());
    std::thread::Builder::new()
        .name("rustformers-generate".into())
        .spawn(move || {
            let alive = WorkerAlive(state.clone());
            worker(rx, generator, state);
            drop(alive);
        })
}

/// Installs the SIGTERM and SIGINT handlers now (within the runtime) and returns the
/// future that completes on either.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .fallback(|| async { ApiError::not_found("no such endpoint").into_response() })
        .with_state(state)
}

/// A job in the batcher: where its events go and its text state.
struct Active<'p> {
    events: mpsc::UnboundedSender<Event>,
    streamer: TextStreamer<'p>,
    trimmer: stop::StopTrimmer,
    tokens: usize,
    logprobs: Vec<TokenLp>,
    first: Arc<FirstToken>,
}

/// The generation worker: continuous batching over every queued job; a job whose client
/// has gone is cancelled.
fn worker(
    rx: std::sync::mpsc::Receiver<Job>,
    generator: Option<Arc<TextGenerationPipeline>>,
    state: Arc<AppState>,
) {
    let Some(pipe) = generator else {
        while let Ok(job) = rx.recv() {
            let _ = job
                .events
                .send(Event::Failed("no text-generation model".into()));
            state.pending.fetch_sub(1, Ordering::SeqCst);
        }
        return;
    };
    let tok = pipe.tokenizer();
    let mut batcher = pipe.batcher(state.config.max_batch_size);
    let mut active: std::collections::HashMap<SeqId, Active<'_>> = Default::default();
    let done = |state: &AppState| {
        state.pending.fetch_sub(1, Ordering::SeqCst);
    };
    loop {
        // Wait for work when idle; otherwise take what has arrived and go on stepping.
        let mut jobs = Vec::new();
        if batcher.is_empty() {
            match rx.recv() {
                Ok(job) => jobs.push(job),
                Err(_) => return,
            }
        }
        jobs.extend(rx.try_iter());
        for job in jobs {
            let opts = SequenceOptions {
                top_logprobs: job.logprobs,
            };
            match batcher.add(job.ids, &job.config, opts) {
                Ok(id) => {
                    active.insert(
                        id,
                        Active {
                            events: job.events,
                            streamer: TextStreamer::new(tok, true),
                            trimmer: stop::StopTrimmer::new(&job.stop),
                            tokens: 0,
                            logprobs: Vec::new(),
                            first: job.first,
                        },
                    );
                }
                Err(e) => {
                    let _ = job.events.send(Event::Failed(e.to_string()));
                    done(&state);
                }
            }
        }
        // Clients that have gone: their sequences stop and free their rows.
        let gone: Vec<SeqId> = active
            .iter()
            .filter(|(_, a)| a.events.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            batcher.cancel(id);
            active.remove(&id);
            done(&state);
        }
        let rows = batcher.running();
        let events = batcher.step();
        // Ends are sent after the metrics are updated, so that a client that has its
        // reply never reads a gauge still counting its sequence.
        let mut ends = Vec::new();
        for event in events {
            match event {
                BatchEvent::Token {
                    id,
                    token,
                    logprobs,
                    finished,
                } => {
                    let Some(a) = active.get_mut(&id) else {
                        continue;
                    };
                    a.tokens += 1;
                    state.metrics.add_tokens(1);
                    a.first.observe(&state.metrics);
                    if let Some(lp) = logprobs {
                        a.logprobs.push(token_lp(tok, token, &lp));
                    }
                    let outcome = emit_token(a, token, finished);
                    if outcome != Outcome::Running {
                        if finished.is_none() {
                            batcher.cancel(id);
                        }
                        if let Some(a) = active.remove(&id) {
                            if outcome != Outcome::Gone {
                                let finish_reason = match (outcome, finished) {
                                    (Outcome::Finished, Some(FinishReason::Length)) => "length",
                                    _ => "stop",
                                };
                                let end = Event::Done {
                                    completion_tokens: a.tokens,
                                    finish_reason,
                                };
                                ends.push((a.events, end));
                            }
                        }
                        done(&state);
                    }
                }
                BatchEvent::Failed { id, message } => {
                    if let Some(a) = active.remove(&id) {
                        ends.push((a.events, Event::Failed(message)));
                        done(&state);
                    }
                }
            }
        }
        // After the step's finished and cancelled rows left (the gauge must not keep a
        // stale count while the worker waits for work).
        state.metrics.add_step(rows, batcher.running());
        for (events, end) in ends {
            let _ = events.send(end);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Running,
    /// The sequence ended (eos, max_tokens).
    Finished,
    /// A stop string was generated.
    StopString,
    /// The client has gone.
    Gone,
}

/// Turns a generated token into text for the client: the streamer's UTF-8-safe piece,
/// held back by the stop-string trimmer as needed; at the end, what is left.
fn emit_token(a: &mut Active<'_>, token: u32, finished: Option<FinishReason>) -> Outcome {
    let mut text = String::new();
    let mut hit = false;
    let mut pieces = Vec::new();
    match a.streamer.push(token) {
        Ok(p) => pieces.push(p),
        Err(e) => {
            let _ = a.events.send(Event::Failed(e.to_string()));
            return Outcome::Gone;
        }
    }
    if finished.is_some() {
        match a.streamer.finish() {
            Ok(p) => pieces.push(p),
            Err(e) => {
                let _ = a.events.send(Event::Failed(e.to_string()));
                return Outcome::Gone;
            }
        }
    }
    for p in pieces {
        if hit || p.is_empty() {
            continue;
        }
        let (emit, h) = a.trimmer.push(&p);
        text.push_str(&emit);
        hit = h;
    }
    if finished.is_some() && !hit {
        text.push_str(&a.trimmer.finish());
    }
    let ended = hit || finished.is_some();
    if (!text.is_empty() || (ended && !a.logprobs.is_empty()))
        && a.events
            .send(Event::Text(text, std::mem::take(&mut a.logprobs)))
            .is_err()
    {
        return Outcome::Gone;
    }
    if hit {
        Outcome::StopString
    } else if finished.is_some() {
        Outcome::Finished
    } else {
        Outcome::Running
    }
}

/// A token's text (special tokens kept) and log-probabilities for the response.
fn token_lp(tok: &AutoTokenizer, token: u32, lp: &TokenLogprobs) -> TokenLp {
    let text = |t: u32| tok.decode(&[t], false).unwrap_or_default();
    TokenLp {
        token: text(token),
        logprob: lp.logprob,
        top: lp.top.iter().map(|&(t, l)| (text(t), l)).collect(),
    }
}

/// The error of a generation that the worker let go of without finishing it.
const UNFINISHED: &str = "the generation ended without finishing (the generation worker stopped)";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn request_id(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{:x}{:04x}",
        now(),
        COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

/// `{"status": "ok"}`; 503 once the generation worker has exited (nothing can be
/// generated any more).
async fn health(State(state): State<Arc<AppState>>) -> Response {
    let queue = state.pending.load(Ordering::SeqCst);
    if !state.worker_alive.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "unavailable", "error": "the generation worker has stopped",
                "queue": queue}),
            ),
        )
            .into_response();
    }
    Json(json!({"status": "ok", "queue": queue})).into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(state.pending.load(Ordering::SeqCst)),
    )
        .into_response()
}

async fn list_models(State(state): State<Arc<AppState>>) -> Response {
    let mut data = Vec::new();
    if let Some((id, _)) = &state.models.generator {
        data.push(json!({"id": id, "object": "model", "created": 0, "owned_by": "rustformers"}));
    }
    if let Some((id, _, _)) = &state.models.embedder {
        data.push(json!({"id": id, "object": "model", "created": 0, "owned_by": "rustformers"}));
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

/// Parses a JSON body into `T`, with OpenAI-shaped errors.
fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}"), None))?;
    if !v.is_object() {
        return Err(ApiError::invalid("the body must be a JSON object", None));
    }
    serde_json::from_value(v).map_err(|e| ApiError::invalid(format!("invalid request: {e}"), None))
}

/// The generator a request names.
fn generator_for(
    state: &AppState,
    model: Option<&str>,
) -> Result<(String, Arc<TextGenerationPipeline>), ApiError> {
    let Some((id, pipe)) = &state.models.generator else {
        return Err(ApiError::not_found(
            "this server has no text-generation model",
        ));
    };
    match model {
        Some(m) if m != id => Err(ApiError::not_found(format!(
            "model `{m}` does not exist; this server generates with `{id}`"
        ))),
        _ => Ok((id.clone(), pipe.clone())),
    }
}

/// The generation parameters of `settings`, in the pipeline's (`generate()`'s) names.
fn params_for(s: &GenSettings) -> Params {
    let mut params = Params::new();
    if s.temperature > 0.0 {
        params.insert("do_sample".into(), json!(true));
        params.insert("temperature".into(), json!(s.temperature));
        params.insert("top_p".into(), json!(s.top_p));
    } else {
        params.insert("do_sample".into(), json!(false));
    }
    if s.presence_penalty != 0.0 || s.frequency_penalty != 0.0 {
        params.insert("presence_penalty".into(), json!(s.presence_penalty));
        params.insert("frequency_penalty".into(), json!(s.frequency_penalty));
    }
    if s.ignore_eos {
        params.insert("eos_token_id".into(), json!([]));
    }
    params
}

/// 503 once shutdown has begun: the requests in flight finish, new ones are refused.
fn refuse_when_shutting_down(state: &AppState) -> Result<(), ApiError> {
    if state.shutting_down.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    Ok(())
}

/// Takes `n` places in the queue, or answers 429 when they are not free.
fn reserve(state: &AppState, n: usize) -> Result<(), ApiError> {
    let before = state.pending.fetch_add(n, Ordering::SeqCst);
    if before + n > state.config.max_queue {
        state.pending.fetch_sub(n, Ordering::SeqCst);
        return Err(ApiError::busy(format!(
            "the queue is full ({} requests waiting or running); retry later",
            state.config.max_queue
        )));
    }
    Ok(())
}

/// A place in the queue, given back when dropped.
struct QueuePlace(Arc<AppState>);

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Tokenizes `input` once, checks that prompt and completion fit the model's context
/// (without `max_tokens` the completion may fill the rest of it, as vLLM's default), and
/// queues `n` generations of it (429 when the queue is full; 400 when `n` alone exceeds
/// the queue, which could never take it). Returns the event receivers and the prompt's
/// token count. `start` is the request's arrival, for its time to first token.
fn submit(
    state: &AppState,
    pipe: &TextGenerationPipeline,
    input: &Value,
    settings: &GenSettings,
    kind: Kind,
    start: Instant,
) -> Result<(Vec<mpsc::UnboundedReceiver<Event>>, usize), ApiError> {
    refuse_when_shutting_down(state)?;
    let n = settings.n;
    let max_queue = state.config.max_queue;
    if n > max_queue {
        return Err(ApiError::invalid(
            format!(
                "n is {n}, but this server queues at most {max_queue} completions at once \
                 (--max-queue {max_queue}): ask for at most {max_queue}"
            ),
            Some("n"),
        ));
    }
    let param = kind.input_param();
    let (ids, mut config) = pipe
        .request(input, &params_for(settings))
        .map_err(|e| ApiError::invalid(e.to_string(), Some(param)))?;
    let prompt = ids.len();
    let ctx = pipe.max_context();
    if prompt >= ctx {
        return Err(ApiError::invalid(
            format!(
                "the prompt is {prompt} tokens: the model's context is {ctx} tokens, which leaves no room for a completion; shorten the prompt"
            ),
            Some(param),
        ));
    }
    let max_tokens = match settings.max_tokens {
        Some(m) if prompt + m > ctx => {
            return Err(ApiError::invalid(
                format!(
                    "the prompt is {prompt} tokens and max_tokens {m}: more than the model's context of {ctx} tokens (at most {} completion tokens fit)",
                    ctx - prompt
                ),
                Some("max_tokens"),
            ))
        }
        Some(m) => m,
        None => ctx - prompt,
    };
    config.max_new_tokens = Some(max_tokens);
    reserve(state, n)?;
    let first = Arc::new(FirstToken {
        endpoint: kind.label(),
        start,
        seen: AtomicBool::new(false),
    });
    let mut receivers = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut config = config.clone();
        // The n completions of one request differ: seeds seed, seed + 1, ...
        config.seed = settings.seed.map(|s| s.wrapping_add(i as u64));
        let job = Job {
            ids: ids.clone(),
            config,
            stop: settings.stop.clone(),
            logprobs: settings.logprobs,
            events: tx,
            first: first.clone(),
        };
        let sent = match state.jobs.lock() {
            Ok(jobs) => jobs.as_ref().is_some_and(|j| j.send(job).is_ok()),
            Err(_) => false,
        };
        if !sent {
            state.pending.fetch_sub(n - i, Ordering::SeqCst);
            return Err(ApiError::internal("the generation worker has stopped"));
        }
        receivers.push(rx);
    }
    state.metrics.add_prompt_tokens(kind.label(), prompt);
    Ok((receivers, prompt))
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let start = Instant::now();
    let r = chat_inner(&state, &body, start).await;
    state.metrics.observe(Kind::Chat.label(), &r, start);
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_inner(
    state: &Arc<AppState>,
    body: &Bytes,
    start: Instant,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(body)?;
    let settings = req.sampling.settings(Endpoint::Chat)?;
    let messages = req.messages.filter(|m| !m.is_empty()).ok_or_else(|| {
        ApiError::invalid(
            "`messages` is required and must not be empty",
            Some("messages"),
        )
    })?;
    if messages
        .iter()
        .any(|m| !m.is_object() || m.get("role").is_none())
    {
        return Err(ApiError::invalid(
            "each message needs a `role` (and `content`)",
            Some("messages"),
        ));
    }
    let messages = flatten_content(messages)?;
    let (model, pipe) = generator_for(state, req.sampling.model.as_deref())?;
    let input = match req.tools {
        Some(tools) => json!({"messages": messages, "tools": tools}),
        None => Value::Array(messages),
    };
    let (receivers, prompt_tokens) = submit(state, &pipe, &input, &settings, Kind::Chat, start)?;
    respond(
        receivers,
        Kind::Chat,
        model,
        prompt_tokens,
        req.sampling.stream,
        &settings,
        Meter::new(&state.metrics, start),
    )
    .await
}

/// OpenAI's content parts (`"content": [{"type": "text", "text": "..."}, ...]`) as the
/// one string chat templates expect: the text parts joined with "\n" (as vLLM joins
/// them). Other parts (images, audio) and content that is neither a string nor a list
/// are refused; null or absent content (an assistant turn with tool calls) is kept.
fn flatten_content(mut messages: Vec<Value>) -> Result<Vec<Value>, ApiError> {
    let bad = |i: usize, what: String| {
        ApiError::invalid(format!("messages[{i}].content: {what}"), Some("messages"))
    };
    for (i, m) in messages.iter_mut().enumerate() {
        let Some(content) = m.get_mut("content") else {
            continue;
        };
        let text = match content {
            Value::String(_) | Value::Null => continue,
            Value::Array(parts) => {
                let mut texts = Vec::with_capacity(parts.len());
                for (k, part) in parts.iter().enumerate() {
                    match (part.get("type").and_then(Value::as_str), part.get("text")) {
                        (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
                        (Some("text"), _) => {
                            return Err(bad(i, format!("part {k} has no string `text`")))
                        }
                        (Some(other), _) => {
                            return Err(bad(
                                i,
                                format!(
                                "part {k} is of type `{other}`; this server takes text parts only"
                            ),
                            ))
                        }
                        (None, _) => {
                            return Err(bad(i, format!("part {k} needs a `type` (\"text\")")))
                        }
                    }
                }
                texts.join("\n")
            }
            other => {
                return Err(bad(
                    i,
                    format!("must be a string or a list of text parts, got {other}"),
                ))
            }
        };
        *content = Value::String(text);
    }
    Ok(messages)
}

async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let start = Instant::now();
    let r = completions_inner(&state, &body, start).await;
    state.metrics.observe(Kind::Completion.label(), &r, start);
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn completions_inner(
    state: &Arc<AppState>,
    body: &Bytes,
    start: Instant,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(body)?;
    let settings = req.sampling.settings(Endpoint::Completions)?;
    let prompt = match req.prompt {
        Some(Value::String(s)) => s,
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "`prompt` must be a string (or a list of one string)",
                Some("prompt"),
            ))
        }
        None => return Err(ApiError::invalid("`prompt` is required", Some("prompt"))),
    };
    let (model, pipe) = generator_for(state, req.sampling.model.as_deref())?;
    let input = Value::String(prompt);
    let (receivers, prompt_tokens) =
        submit(state, &pipe, &input, &settings, Kind::Completion, start)?;
    respond(
        receivers,
        Kind::Completion,
        model,
        prompt_tokens,
        req.sampling.stream,
        &settings,
        Meter::new(&state.metrics, start),
    )
    .await
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

impl Kind {
    /// The `endpoint` label of its metrics.
    fn label(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Completion => "completions",
        }
    }

    /// The request field that holds the prompt.
    fn input_param(self) -> &'static str {
        match self {
            Kind::Chat => "messages",
            Kind::Completion => "prompt",
        }
    }
}

/// Where a response's timings go: the metrics and the request's arrival.
struct Meter {
    metrics: Arc<Metrics>,
    start: Instant,
}

impl Meter {
    fn new(metrics: &Arc<Metrics>, start: Instant) -> Self {
        Self {
            metrics: metrics.clone(),
            start,
        }
    }
}

/// Records a stream's whole duration once: before its last event is sent (so that a
/// client that has read `[DONE]` finds it counted), or when the stream ends early (the
/// client gone).
struct StreamTimer {
    meter: Meter,
    endpoint: &'static str,
    recorded: bool,
}

impl StreamTimer {
    fn finish(&mut self) {
        if !self.recorded {
            self.recorded = true;
            let took: Duration = self.meter.start.elapsed();
            self.meter.metrics.observe_stream(self.endpoint, took);
        }
    }
}

impl Drop for StreamTimer {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Chat's `logprobs` object: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
fn chat_logprobs(lps: &[TokenLp]) -> Value {
    let entry = |t: &str, l: f32| json!({"token": t, "logprob": l, "bytes": t.as_bytes()});
    let content: Vec<Value> = lps
        .iter()
        .map(|lp| {
            let mut e = entry(&lp.token, lp.logprob);
            e["top_logprobs"] = lp.top.iter().map(|(t, l)| entry(t, *l)).collect();
            e
        })
        .collect();
    json!({ "content": content })
}

/// Text completions' `logprobs` object: parallel lists of tokens, their log-probabilities,
/// `{token: logprob}` alternatives and character offsets into the completion text
/// (`offset` carries across stream chunks).
fn completion_logprobs(lps: &[TokenLp], offset: &mut usize) -> Value {
    let mut text_offset = Vec::with_capacity(lps.len());
    for lp in lps {
        text_offset.push(*offset);
        *offset += lp.token.chars().count();
    }
    json!({
        "tokens": lps.iter().map(|lp| lp.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|lp| lp.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps
            .iter()
            .map(|lp| {
                lp.top
                    .iter()
                    .map(|(t, l)| (t.clone(), json!(l)))
                    .collect::<serde_json::Map<String, Value>>()
            })
            .collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

/// The response's `logprobs` value for `lps` (null when they were not asked for).
fn logprobs_value(kind: Kind, wanted: bool, lps: &[TokenLp], offset: &mut usize) -> Value {
    match (wanted, kind) {
        (false, _) => Value::Null,
        (true, Kind::Chat) => chat_logprobs(lps),
        (true, Kind::Completion) => completion_logprobs(lps, offset),
    }
}

/// A whole response, or an SSE stream of chunks ending in `data: [DONE]`.
async fn respond(
    receivers: Vec<mpsc::UnboundedReceiver<Event>>,
    kind: Kind,
    model: String,
    prompt_tokens: usize,
    stream: bool,
    settings: &GenSettings,
    meter: Meter,
) -> Result<Response, ApiError> {
    let (logprobs, include_usage) = (settings.logprobs.is_some(), settings.include_usage);
    let (id, object) = match kind {
        Kind::Chat => (request_id("chatcmpl"), "chat.completion"),
        Kind::Completion => (request_id("cmpl"), "text_completion"),
    };
    let created = now();
    if !stream {
        let mut choices = Vec::new();
        let mut completion_tokens = 0;
        for (index, mut rx) in receivers.into_iter().enumerate() {
            let mut text = String::new();
            let mut lps = Vec::new();
            let mut finish = None;
            while let Some(ev) = rx.recv().await {
                match ev {
                    Event::Text(t, lp) => {
                        text.push_str(&t);
                        lps.extend(lp);
                    }
                    Event::Done {
                        completion_tokens: n,
                        finish_reason,
                    } => {
                        completion_tokens += n;
                        finish = Some(finish_reason);
                    }
                    Event::Failed(e) => return Err(ApiError::internal(e)),
                }
            }
            // The worker let go of the request without finishing it: not a reply.
            let Some(finish) = finish else {
                return Err(ApiError::internal(UNFINISHED));
            };
            let lp = logprobs_value(kind, logprobs, &lps, &mut 0);
            choices.push(match kind {
                Kind::Chat => {
                    json!({"index": index, "message": {"role": "assistant", "content": text},
                    "logprobs": lp, "finish_reason": finish})
                }
                Kind::Completion => json!({"index": index, "text": text, "logprobs": lp,
                    "finish_reason": finish}),
            });
        }
        return Ok(Json(json!({
            "id": id, "object": object, "created": created, "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens},
        }))
        .into_response());
    }
    let chunk_object = match kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Completion => "text_completion",
    };
    let (tx, rx) = mpsc::channel::<Result<SseEvent, std::convert::Infallible>>(64);
    let mut timer = StreamTimer {
        meter,
        endpoint: kind.label(),
        recorded: false,
    };
    tokio::spawn(async move {
        let chunk = |index: usize, delta: Value, lp: Value, finish: Value| -> SseEvent {
            let choice = match kind {
                Kind::Chat => {
                    json!({"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish})
                }
                Kind::Completion => {
                    json!({"index": index, "text": delta.get("content").cloned().unwrap_or(json!("")),
                    "logprobs": lp, "finish_reason": finish})
                }
            };
            let mut body = json!({"id": id, "object": chunk_object, "created": created,
                "model": model, "choices": [choice]});
            if include_usage {
                body["usage"] = Value::Null;
            }
            SseEvent::default().data(body.to_string())
        };
        let mut completion_tokens = 0;
        for (index, mut rx) in receivers.into_iter().enumerate() {
            if kind == Kind::Chat
                && tx
                    .send(Ok(chunk(
                        index,
                        json!({"role": "assistant", "content": ""}),
                        Value::Null,
                        Value::Null,
                    )))
                    .await
                    .is_err()
            {
                return;
            }
            let mut offset = 0;
            let mut failure = Some(UNFINISHED.to_string());
            while let Some(ev) = rx.recv().await {
                let out = match ev {
                    Event::Text(t, lp) => chunk(
                        index,
                        json!({"content": t}),
                        logprobs_value(kind, logprobs, &lp, &mut offset),
                        Value::Null,
                    ),
                    Event::Done {
                        finish_reason,
                        completion_tokens: n,
                    } => {
                        completion_tokens += n;
                        failure = None;
                        chunk(index, json!({}), Value::Null, json!(finish_reason))
                    }
                    Event::Failed(e) => {
                        failure = Some(e);
                        break;
                    }
                };
                // A closed connection drops the receivers, which stops the worker.
                if tx.send(Ok(out)).await.is_err() {
                    return;
                }
            }
            // A failed or abandoned generation ends the stream with an error event (as
            // vLLM's: `data: {"error": ...}`, then `[DONE]`), not with a finish reason.
            if let Some(e) = failure {
                let error = ApiError::internal(e).body().to_string();
                if tx.send(Ok(SseEvent::default().data(error))).await.is_ok() {
                    timer.finish();
                    let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                }
                return;
            }
        }
        if include_usage {
            let usage = json!({"id": id, "object": chunk_object, "created": created,
                "model": model, "choices": [],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens}});
            if tx
                .send(Ok(SseEvent::default().data(usage.to_string())))
                .await
                .is_err()
            {
                return;
            }
        }
        timer.finish();
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Ok(Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx)).into_response())
}

async fn embeddings(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let start = Instant::now();
    let r = embeddings_inner(&state, &body).await;
    state.metrics.observe("embeddings", &r, start);
    r.unwrap_or_else(IntoResponse::into_response)
}

/// Embeds up to `MAX_EMBEDDING_INPUTS` texts as one request: refused during shutdown
/// (503) and when the queue is full (429), like generations; it holds one place in the
/// queue until its vectors are computed.
async fn embeddings_inner(state: &Arc<AppState>, body: &Bytes) -> Result<Response, ApiError> {
    let req: EmbeddingRequest = parse(body)?;
    refuse_when_shutting_down(state)?;
    let Some((id, pipe, tok)) = state.models.embedder.clone() else {
        return Err(ApiError::not_found("this server has no embedding model"));
    };
    if let Some(m) = &req.model {
        if *m != id {
            return Err(ApiError::not_found(format!(
                "model `{m}` does not exist; this server embeds with `{id}`"
            )));
        }
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("encoding_format `{other}`: use float or base64"),
                Some("encoding_format"),
            ))
        }
    };
    let texts: Vec<String> = match req.input {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => {
            return Err(ApiError::invalid(
                "`input` must be a string or a non-empty list of strings",
                Some("input"),
            ))
        }
    };
    if texts.len() > MAX_EMBEDDING_INPUTS {
        return Err(ApiError::invalid(
            format!(
                "`input` holds {} texts: at most {MAX_EMBEDDING_INPUTS} per request; split it",
                texts.len()
            ),
            Some("input"),
        ));
    }
    reserve(state, 1)?;
    // Given back when the work ends, even if the client has gone before.
    let place = QueuePlace(state.clone());
    let result = tokio::task::spawn_blocking(move || {
        let _place = place;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = pipe.embed(&refs, 32)?;
        let mut tokens = 0;
        for t in &refs {
            let enc = tok.encode(rustformers_core::TextInput::Single(t), &Default::default())?;
            tokens += enc.input_ids.first().map_or(0, Vec::len);
        }
        Ok::<_, rustformers_core::Error>((vectors, tokens))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let (vectors, tokens) = result.map_err(|e| ApiError::invalid(e.to_string(), Some("input")))?;
    state.metrics.add_prompt_tokens("embeddings", tokens);
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                // OpenAI's base64 form: the little-endian f32 bytes.
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(encode_base64(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data, "model": id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response())
}

/// Standard base64 with padding.
fn encode_base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn settings(stream: bool) -> GenSettings {
        let s: api::Sampling = serde_json::from_value(json!({"stream": stream})).unwrap();
        s.settings(Endpoint::Chat).unwrap()
    }

    fn meter() -> Meter {
        Meter::new(&Arc::new(Metrics::default()), Instant::now())
    }

    /// A generation whose worker sent some text and then let go of it without `Done`.
    fn abandoned() -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Event::Text("partial".into(), Vec::new())).unwrap();
        drop(tx);
        rx
    }

    #[test]
    fn an_abandoned_generation_is_a_server_error_not_a_reply() {
        let rt = runtime();
        let r = rt.block_on(respond(
            vec![abandoned()],
            Kind::Chat,
            "m".into(),
            3,
            false,
            &settings(false),
            meter(),
        ));
        let e = r.expect_err("a 500, not a truncated 200");
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.body()["error"]["type"], "server_error");
        // The same finished with Done is a reply.
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Event::Text("whole".into(), Vec::new())).unwrap();
        tx.send(Event::Done {
            completion_tokens: 1,
            finish_reason: "length",
        })
        .unwrap();
        drop(tx);
        let r = rt
            .block_on(respond(
                vec![rx],
                Kind::Chat,
                "m".into(),
                3,
                false,
                &settings(false),
                meter(),
            ))
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        // Streaming: the text sent, then an error event (no finish reason), then [DONE].
        let body = rt.block_on(async {
            let r = respond(
                vec![abandoned()],
                Kind::Chat,
                "m".into(),
                3,
                true,
                &settings(true),
                meter(),
            )
            .await
            .unwrap();
            axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap()
        });
        let events: Vec<String> = String::from_utf8(body.to_vec())
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
            .collect();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let values: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(values[1]["choices"][0]["delta"]["content"], "partial");
        let last = values.last().unwrap();
        assert_eq!(last["error"]["type"], "server_error", "{last}");
        assert!(values
            .iter()
            .all(|v| v["choices"][0]["finish_reason"].is_null()));
    }

    /// A finished generation of one token.
    fn finished() -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Event::Text("whole".into(), Vec::new())).unwrap();
        tx.send(Event::Done {
            completion_tokens: 1,
            finish_reason: "length",
        })
        .unwrap();
        rx
    }

    fn stream_count(metrics: &Metrics) -> Option<String> {
        metrics.render(0).lines().find_map(|l| {
            l.strip_prefix("rustformers_stream_seconds_count{endpoint=\"chat\"} ")
                .map(str::to_string)
        })
    }

    #[test]
    fn a_streams_whole_duration_is_recorded_once_read_or_dropped() {
        let rt = runtime();
        let metrics = Arc::new(Metrics::default());
        let start = Instant::now();
        // Not streamed: no stream duration.
        let r = rt.block_on(respond(
            vec![finished()],
            Kind::Chat,
            "m".into(),
            3,
            false,
            &settings(false),
            Meter::new(&metrics, start),
        ));
        assert_eq!(r.unwrap().status(), StatusCode::OK);
        assert_eq!(stream_count(&metrics), None);
        // Read to [DONE]: counted by then, with the time since `start`.
        let body = rt.block_on(async {
            let r = respond(
                vec![finished()],
                Kind::Chat,
                "m".into(),
                3,
                true,
                &settings(true),
                Meter::new(&metrics, start),
            )
            .await
            .unwrap();
            axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap()
        });
        assert!(String::from_utf8_lossy(&body).contains("data: [DONE]"));
        assert_eq!(stream_count(&metrics).as_deref(), Some("1"));
        let sum: f64 = metrics
            .render(0)
            .lines()
            .find_map(|l| l.strip_prefix("rustformers_stream_seconds_sum{endpoint=\"chat\"} "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(sum > 0.0 && sum <= start.elapsed().as_secs_f64(), "{sum}");
        // A client that goes before the end (the body dropped unread): counted too.
        let (tx, rx) = mpsc::unbounded_channel();
        rt.block_on(async {
            let r = respond(
                vec![rx],
                Kind::Chat,
                "m".into(),
                3,
                true,
                &settings(true),
                Meter::new(&metrics, start),
            )
            .await
            .unwrap();
            drop(r);
            // The stream task sees the closed channel at its next send.
            tx.send(Event::Text("late".into(), Vec::new())).unwrap();
            for _ in 0..200 {
                if stream_count(&metrics).as_deref() == Some("2") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert_eq!(stream_count(&metrics).as_deref(), Some("2"));
    }

    fn tiny_bert() -> Models {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/tiny-bert-base"
        );
        let opts = rustformers_models::LoadOptions::default();
        let pipe = FeatureExtractionPipeline::from_pretrained(dir, &opts).unwrap();
        let tok = AutoTokenizer::from_pretrained(dir).unwrap();
        Models {
            generator: None,
            embedder: Some(("bert".into(), Arc::new(pipe), Arc::new(tok))),
        }
    }

    #[test]
    fn embeddings_take_a_queue_place_and_are_refused_when_full_or_shutting_down() {
        let config = ServerConfig {
            max_queue: 2,
            ..Default::default()
        };
        let (state, _rx) = app_state(tiny_bert(), config);
        let rt = runtime();
        let post = |body: Value| {
            let r = rt.block_on(embeddings(
                State(state.clone()),
                Bytes::from(body.to_string()),
            ));
            let status = r.status();
            let bytes = rt
                .block_on(axum::body::to_bytes(r.into_body(), 1 << 24))
                .unwrap();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        };
        let (status, v) = post(json!({"input": ["a", "b"]}));
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        // Its place is given back once answered.
        assert_eq!(state.pending.load(Ordering::SeqCst), 0);
        // The queue full (two generations running): 429 in OpenAI's shape.
        state.pending.store(2, Ordering::SeqCst);
        let (status, v) = post(json!({"input": "a"}));
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{v}");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(state.pending.load(Ordering::SeqCst), 2);
        // One place free: served.
        state.pending.store(1, Ordering::SeqCst);
        assert_eq!(post(json!({"input": "a"})).0, StatusCode::OK);
        assert_eq!(state.pending.load(Ordering::SeqCst), 1);
        state.pending.store(0, Ordering::SeqCst);
        // Shutting down: 503, as for completions.
        state.shutting_down.store(true, Ordering::SeqCst);
        let (status, v) = post(json!({"input": "a"}));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down"));
    }

    /// Once shutdown has begun, chat and completions are refused with 503 before
    /// anything is queued (the requests in flight finish).
    #[test]
    fn generations_are_refused_while_shutting_down() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/tiny-llama"
        );
        let opts = rustformers_models::LoadOptions::default();
        let pipe = TextGenerationPipeline::from_pretrained(dir, &opts).unwrap();
        let models = Models {
            generator: Some(("llama".into(), Arc::new(pipe))),
            embedder: None,
        };
        let (state, _rx) = app_state(models, ServerConfig::default());
        state.shutting_down.store(true, Ordering::SeqCst);
        let rt = runtime();
        for (r, what) in [
            (
                rt.block_on(chat_completions(
                    State(state.clone()),
                    Bytes::from(
                        json!({"messages": [{"role": "user", "content": "Hi"}]}).to_string(),
                    ),
                )),
                "chat",
            ),
            (
                rt.block_on(completions(
                    State(state.clone()),
                    Bytes::from(json!({"prompt": "Hi"}).to_string()),
                )),
                "completions",
            ),
        ] {
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
            let bytes = rt
                .block_on(axum::body::to_bytes(r.into_body(), 1 << 20))
                .unwrap();
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("shutting down"),
                "{what}: {v}"
            );
        }
        assert_eq!(state.pending.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn health_is_503_once_the_worker_has_exited() {
        let models = Models {
            generator: None,
            embedder: None,
        };
        let (state, rx) = app_state(models, ServerConfig::default());
        let worker = spawn_worker(rx, state.clone()).unwrap();
        let rt = runtime();
        let status = |state: &Arc<AppState>| rt.block_on(health(State(state.clone()))).status();
        assert_eq!(status(&state), StatusCode::OK);
        // Closing the queue (as serve_on does when it returns) ends the worker thread.
        close_queue(&state);
        worker.join().unwrap();
        assert!(!state.worker_alive.load(Ordering::SeqCst));
        assert_eq!(status(&state), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn content_parts_become_one_string() {
        let m = flatten_content(vec![json!({"role": "user", "content": [
            {"type": "text", "text": "one"}, {"type": "text", "text": "two"}]})])
        .unwrap();
        assert_eq!(m[0]["content"], "one\ntwo");
        let same = vec![
            json!({"role": "user", "content": "plain"}),
            json!({"role": "assistant", "content": null}),
        ];
        assert_eq!(flatten_content(same.clone()).unwrap(), same);
        for content in [
            json!([{"type": "image_url", "image_url": {"url": "x"}}]),
            json!([{"type": "text"}]),
            json!(["bare"]),
            json!(5),
            json!({"text": "x"}),
        ] {
            let e = flatten_content(vec![json!({"role": "user", "content": content})]).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.param.as_deref(), Some("messages"), "{content}");
        }
    }

    #[test]
    fn base64_is_the_standard_one() {
        assert_eq!(super::encode_base64(b""), "");
        assert_eq!(super::encode_base64(b"f"), "Zg==");
        assert_eq!(super::encode_base64(b"fo"), "Zm8=");
        assert_eq!(super::encode_base64(b"foobar"), "Zm9vYmFy");
    }
}
