//! The HTTP API (SPEC §4), as far as the log goes: health, topics, and
//! producing and reading records. Handlers parse and validate, call the
//! storage off the async workers, and convert to the wire shapes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use futures::StreamExt;
use serde::Deserialize;
use sluice_engine::Engine;
use sluice_engine::storage::{
    self, CleanupPolicy, Fetch, ProduceRecord, ReadLimits, Record, Storage, TopicConfig,
    TopicSettings,
};

use crate::wire;

#[derive(Clone)]
struct AppState {
    engine: Engine,
    storage: Storage,
    shutdown: tokio::sync::watch::Receiver<bool>,
    query_timeout: Duration,
    sql_runtime: tokio::runtime::Handle,
    auth_token: Option<Arc<str>>,
    /// One permit per push query being served.
    push_slots: Arc<tokio::sync::Semaphore>,
}

/// How [`serve`] serves.
pub(crate) struct ServeOptions {
    pub(crate) listen: SocketAddr,
    pub(crate) max_body_bytes: usize,
    /// Longest a SQL request may run.
    pub(crate) query_timeout: Duration,
    /// Where SQL statements run (not on the HTTP workers).
    pub(crate) sql_runtime: tokio::runtime::Handle,
    /// The bearer token every endpoint but health requires, if any.
    pub(crate) auth_token: Option<String>,
    /// Push queries served at once.
    pub(crate) max_push_queries: usize,
}

/// Serves the API until SIGINT or SIGTERM.
pub(crate) async fn serve(engine: Engine, options: ServeOptions) -> anyhow::Result<()> {
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let storage = engine.storage().clone();
    let listen = options.listen;
    let app = router(
        AppState {
            engine,
            storage,
            shutdown,
            query_timeout: options.query_timeout,
            sql_runtime: options.sql_runtime,
            auth_token: options.auth_token.map(Arc::from),
            push_slots: Arc::new(tokio::sync::Semaphore::new(options.max_push_queries)),
        },
        options.max_body_bytes,
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "serving HTTP");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: no new requests, closing open streams");
            let _ = shutdown_tx.send(true);
        })
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

fn router(state: AppState, max_body_bytes: usize) -> Router {
    let protected = Router::new()
        .route("/v1/sql", post(run_sql))
        .route("/v1/query", post(push_query))
        .route("/v1/queries", get(list_queries).post(start_query))
        .route("/v1/queries/{id}", get(get_query).delete(stop_query))
        .route("/metrics", get(metrics))
        .route("/v1/topics", get(list_topics).post(create_topic))
        .route("/v1/topics/{topic}", get(get_topic).delete(delete_topic))
        .route(
            "/v1/topics/{topic}/records",
            get(read_records).post(produce),
        )
        .fallback(no_route)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/v1/health", get(health))
        .merge(protected)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// With `--auth-token`, every endpoint but `/v1/health` needs
/// `Authorization: Bearer <token>`.
async fn require_token(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(expected) = &state.auth_token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => {
            next.run(request).await
        }
        _ => {
            let mut response = ApiError {
                status: StatusCode::UNAUTHORIZED,
                code: "unauthorized",
                message: "missing or wrong token: send Authorization: Bearer <token>".to_string(),
            }
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

/// Compares without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An error answer: `{"error":{"code","message"}}` with a status.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = wire::ErrorBody {
            error: wire::ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<storage::Error> for ApiError {
    fn from(error: storage::Error) -> Self {
        use storage::Error as E;
        let (status, code) = match &error {
            E::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            E::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            E::AlreadyExists(_) => (StatusCode::CONFLICT, "already_exists"),
            E::NoSuchPartition { .. } => (StatusCode::NOT_FOUND, "no_such_partition"),
            E::OffsetOutOfRange { .. } => (StatusCode::BAD_REQUEST, "offset_out_of_range"),
            E::RecordTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "record_too_large"),
            E::Closed => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(%error, "request failed");
        }
        ApiError {
            status,
            code,
            message: error.to_string(),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        ApiError {
            status,
            code: if status == StatusCode::PAYLOAD_TOO_LARGE {
                "body_too_large"
            } else {
                "bad_request"
            },
            message: rejection.body_text(),
        }
    }
}

impl From<sluice_engine::Error> for ApiError {
    fn from(error: sluice_engine::Error) -> Self {
        use sluice_engine::Error as E;
        let (status, code) = match &error {
            E::Sql { .. } => (StatusCode::BAD_REQUEST, "sql_syntax"),
            E::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            E::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            E::Unsupported(_) => (StatusCode::BAD_REQUEST, "unsupported"),
            E::Storage(_) | E::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(%error, "statement failed");
        }
        ApiError {
            status,
            code,
            message: error.to_string(),
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs blocking storage work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> storage::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: format!("task failed: {e}"),
        })?
        .map_err(ApiError::from)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: format!("no endpoint {method} {}", uri.path()),
    }
}

async fn health() -> Json<wire::Health> {
    Json(wire::Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// `POST /v1/sql`: runs one or more statements; answers one result each.
async fn run_sql(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<wire::SqlResults>> {
    let request: wire::SqlRequest = parse_json(&body?)?;
    let engine = state.engine.clone();
    // Cancelled when the client goes away (this future is dropped) or
    // when it runs past the timeout; scans stop as their channels close.
    let mut task = AbortOnDrop(
        state
            .sql_runtime
            .spawn(async move { engine.execute(&request.sql).await }),
    );
    let outputs = tokio::select! {
        joined = &mut task.0 => joined.map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: format!("the statement's task failed: {e}"),
        })??,
        () = tokio::time::sleep(state.query_timeout) => {
            return Err(ApiError {
                status: StatusCode::REQUEST_TIMEOUT,
                code: "timeout",
                message: format!(
                    "the request ran longer than {} s (--query-timeout) and was cancelled; \
                     statements that had finished keep their effect",
                    state.query_timeout.as_secs()
                ),
            });
        }
    };
    let results = outputs
        .into_iter()
        .map(wire::sql_result)
        .collect::<Result<Vec<_>, String>>()
        .map_err(|message| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message,
        })?;
    Ok(Json(wire::SqlResults { results }))
}

/// Starts a continuous query on the SQL runtime, so that the tasks it
/// spawns (its triggers) run there, not on the HTTP workers.
async fn start_on_sql_runtime<T: Send + 'static>(
    state: &AppState,
    start: impl std::future::Future<Output = sluice_engine::Result<T>> + Send + 'static,
) -> ApiResult<T> {
    Ok(state
        .sql_runtime
        .spawn(start)
        .await
        .map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: format!("starting the query failed: {e}"),
        })??)
}

/// `POST /v1/queries`: starts a persistent query (`CREATE STREAM ... AS
/// SELECT ... EMIT ...` or `INSERT INTO ... SELECT ... EMIT ...`).
async fn start_query(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let request: wire::SqlRequest = parse_json(&body?)?;
    let engine = state.engine.clone();
    let handle = start_on_sql_runtime(
        &state,
        async move { engine.start_query(&request.sql).await },
    )
    .await?;
    let info = handle.info();
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "id": info.id,
            "name": info.name,
            "status": info.status.as_str(),
            "sink": info.sink,
        })),
    ))
}

/// `GET /v1/queries`: every persistent query with its status.
async fn list_queries(State(state): State<AppState>) -> Json<serde_json::Value> {
    let queries: Vec<serde_json::Value> = state
        .engine
        .queries()
        .into_iter()
        .map(wire::query_json)
        .collect();
    Json(serde_json::json!({ "queries": queries }))
}

/// `GET /v1/queries/{id}`: status and the last trigger's progress.
async fn get_query(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let handle = state.engine.query_handle(&id)?;
    Ok(Json(wire::query_json(handle.info())))
}

/// `DELETE /v1/queries/{id}`: stops it (its running trigger commits first).
async fn stop_query(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let handle = state.engine.query_handle(&id)?;
    handle.stop().await?;
    Ok(Json(wire::query_json(handle.info())))
}

/// `POST /v1/query`: a push query. NDJSON (or server-sent events when the
/// client accepts `text/event-stream`): a header line, then one JSON array
/// per row as triggers emit them. The client disconnecting cancels it.
async fn push_query(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: wire::SqlRequest = parse_json(&body?)?;
    // Held by the response stream: a push query's slot frees when its
    // client goes away or it ends.
    let slot = state
        .push_slots
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "too_many_push_queries",
            message: "the server is serving as many push queries as it allows \
                  (--max-push-queries); try again when one ends"
                .to_string(),
        })?;
    let engine = state.engine.clone();
    let subscription =
        start_on_sql_runtime(&state, async move { engine.subscribe(&request.sql).await }).await?;
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    let query_id = subscription.id().to_string();
    let frame = move |value: serde_json::Value| -> Bytes {
        if sse {
            Bytes::from(format!("data: {value}\n\n"))
        } else {
            Bytes::from(format!("{value}\n"))
        }
    };
    let header_line = frame(serde_json::json!({
        "header": {"query_id": query_id, "columns": wire::columns_json(subscription.schema())}
    }));
    let shutdown = state.shutdown.clone();
    let rows = futures::stream::unfold(
        (subscription, shutdown, false, slot),
        move |(mut subscription, mut shutdown, done, slot)| async move {
            if done {
                return None;
            }
            let next = tokio::select! {
                next = subscription.next() => next,
                _ = shutdown.changed() => None,
            };
            let (chunk, done) = match next {
                None => return None,
                Some(Ok(batch)) => match wire::batch_rows(&batch) {
                    Ok(rows) => {
                        let mut chunk = Vec::new();
                        for row in rows {
                            chunk.extend_from_slice(&frame(serde_json::Value::from(row)));
                        }
                        (chunk, false)
                    }
                    Err(message) => (
                        frame(
                            serde_json::json!({"error": {"code": "internal", "message": message}}),
                        )
                        .to_vec(),
                        true,
                    ),
                },
                Some(Err(error)) => {
                    let message = error.to_string();
                    let code = ApiError::from(error).code;
                    (
                        frame(serde_json::json!({"error": {"code": code, "message": message}}))
                            .to_vec(),
                        true,
                    )
                }
            };
            Some((
                Ok::<_, std::io::Error>(Bytes::from(chunk)),
                (subscription, shutdown, done, slot),
            ))
        },
    );
    let body =
        futures::stream::once(async move { Ok::<_, std::io::Error>(header_line) }).chain(rows);
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body.boxed()),
    )
        .into_response())
}

async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let storage = state.storage.clone();
    let queries = state.engine.queries();
    let text = blocking(move || crate::metrics::render(&storage, &queries)).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn list_topics(State(state): State<AppState>) -> ApiResult<Json<wire::TopicList>> {
    let storage = state.storage.clone();
    let topics = blocking(move || storage.describe_topics()).await?;
    Ok(Json(wire::TopicList {
        topics: topics.into_iter().map(wire::Topic::from).collect(),
    }))
}

async fn create_topic(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<wire::Topic>)> {
    let request: wire::CreateTopic = parse_json(&body?)?;
    let cleanup = match &request.cleanup {
        Some(text) => CleanupPolicy::parse(text)?,
        None => CleanupPolicy::Delete,
    };
    let config = TopicConfig::new(request.name, request.partitions).with_settings(TopicSettings {
        retention_ms: request.retention_ms,
        retention_bytes: request.retention_bytes,
        cleanup,
    });
    let storage = state.storage.clone();
    let description = blocking(move || storage.create_topic(config)).await?;
    Ok((StatusCode::CREATED, Json(description.into())))
}

async fn get_topic(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> ApiResult<Json<wire::Topic>> {
    let description = state.storage.describe_topic(&topic)?;
    Ok(Json(description.into()))
}

async fn delete_topic(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> ApiResult<Json<wire::Status>> {
    let storage = state.storage.clone();
    let name = topic.clone();
    blocking(move || storage.drop_topic(&name)).await?;
    Ok(Json(wire::Status {
        status: "ok",
        message: format!("topic \"{topic}\" dropped"),
    }))
}

/// A JSON string becomes its text; any other JSON value its JSON text.
fn json_bytes(value: serde_json::Value) -> Vec<u8> {
    match value {
        serde_json::Value::String(text) => text.into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

async fn produce(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<wire::ProduceResponse>> {
    let body = body?;
    let now = storage::now_ms();
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    let records: Vec<ProduceRecord> = if ndjson {
        let mut records = Vec::new();
        for (number, line) in body.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            serde_json::from_slice::<serde::de::IgnoredAny>(line).map_err(|e| {
                ApiError::bad_request(format!("line {}: not a JSON value: {e}", number + 1))
            })?;
            records.push(Record::new(line.to_vec()).with_timestamp(now).into());
        }
        records
    } else {
        let request: wire::ProduceRequest = parse_json(&body)?;
        request
            .records
            .into_iter()
            .map(|r| {
                let mut record =
                    Record::new(json_bytes(r.value)).with_timestamp(r.timestamp.unwrap_or(now));
                if let Some(key) = r.key.filter(|k| !k.is_null()) {
                    record = record.with_key(json_bytes(key));
                }
                for header in r.headers {
                    record = record.with_header(header.name, header.value.into_bytes());
                }
                ProduceRecord {
                    partition: r.partition,
                    record,
                }
            })
            .collect()
    };
    if records.is_empty() {
        return Err(ApiError::bad_request("no records to produce"));
    }
    // The engine decodes JSON produced to a columnar stream's topic once,
    // here, on write; other topics take the records as they are.
    let positions =
        state
            .engine
            .sql()
            .produce(&topic, records)
            .await
            .map_err(|error| match error {
                // The log's own errors keep their status (404 partition, 413...).
                sluice_engine::sql::Error::Storage(error) => ApiError::from(error),
                other => ApiError::from(sluice_engine::Error::from(other)),
            })?;
    Ok(Json(wire::ProduceResponse {
        offsets: positions
            .into_iter()
            .map(|p| wire::Position {
                partition: p.partition,
                offset: p.offset,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    partition: Option<u32>,
    offset: Option<u64>,
    limit: Option<usize>,
    #[serde(default)]
    follow: bool,
}

const DEFAULT_READ_LIMIT: usize = 1_000;
const MAX_READ_LIMIT: usize = 100_000;
const FOLLOW_POLL: Duration = Duration::from_secs(5);

fn text_or_base64(bytes: &[u8], binary: &mut bool) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => {
            *binary = true;
            base64::engine::general_purpose::STANDARD.encode(bytes)
        }
    }
}

/// Renders a fetch as NDJSON lines.
fn render(fetch: &Fetch, out: &mut Vec<u8>, limit: &mut usize) -> storage::Result<()> {
    for batch in &fetch.batches {
        if let Some(columnar) = batch.columnar()? {
            // A columnar batch's rows read as JSON objects, one per offset.
            let (start, end) = columnar.rows;
            let values = sluice_engine::columnar_json_rows(&columnar)?;
            let timestamps = columnar.timestamps()?;
            for (row, value) in (start..end).zip(values) {
                if *limit == 0 {
                    return Ok(());
                }
                let line = wire::RecordOut {
                    partition: batch.partition(),
                    offset: columnar.base_offset + row as u64,
                    timestamp: timestamps[row],
                    key: None,
                    value: String::from_utf8_lossy(&value).into_owned(),
                    headers: Vec::new(),
                    encoding: None,
                };
                serde_json::to_writer(&mut *out, &line)
                    .map_err(|e| storage::Error::Internal(format!("rendering a record: {e}")))?;
                out.push(b'\n');
                *limit -= 1;
            }
            continue;
        }
        for record in batch.records()? {
            if *limit == 0 {
                return Ok(());
            }
            let record = record?;
            let mut binary = false;
            let key = record.key.map(|k| text_or_base64(k, &mut binary));
            let value = text_or_base64(record.value, &mut binary);
            let headers = record
                .headers()
                .map(|(name, value)| wire::HeaderOut {
                    name: name.to_string(),
                    value: text_or_base64(value, &mut binary),
                })
                .collect();
            let line = wire::RecordOut {
                partition: batch.partition(),
                offset: record.offset,
                timestamp: record.timestamp_ms,
                key,
                value,
                headers,
                encoding: binary.then_some("base64"),
            };
            serde_json::to_writer(&mut *out, &line)
                .map_err(|e| storage::Error::Internal(format!("rendering a record: {e}")))?;
            out.push(b'\n');
            *limit -= 1;
        }
    }
    Ok(())
}

/// One read position per partition being read.
struct Cursor {
    partition: u32,
    offset: u64,
}

async fn read_records(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    params: Result<Query<ReadParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let description = state.storage.describe_topic(&topic)?;
    let cursors: Vec<Cursor> = match params.partition {
        Some(partition) => {
            let info = description
                .partitions
                .get(partition as usize)
                .ok_or_else(|| {
                    ApiError::from(storage::Error::NoSuchPartition {
                        topic: topic.clone(),
                        partition,
                        partitions: description.partitions.len() as u32,
                    })
                })?;
            vec![Cursor {
                partition,
                offset: params.offset.unwrap_or(info.log_start_offset),
            }]
        }
        None => {
            if params.offset.is_some() {
                return Err(ApiError::bad_request(
                    "offset needs a partition: add ?partition=N",
                ));
            }
            description
                .partitions
                .iter()
                .map(|p| Cursor {
                    partition: p.partition,
                    offset: p.log_start_offset,
                })
                .collect()
        }
    };
    let limit = match params.limit {
        Some(0) => return Err(ApiError::bad_request("limit must be positive")),
        Some(limit) if limit > MAX_READ_LIMIT && !params.follow => {
            return Err(ApiError::bad_request(format!(
                "limit must be at most {MAX_READ_LIMIT}"
            )));
        }
        Some(limit) => limit,
        None if params.follow => usize::MAX,
        None => DEFAULT_READ_LIMIT,
    };
    let mut reader = Reader {
        storage: state.storage.clone(),
        topic,
        cursors,
        remaining: limit,
    };
    // Check the starting offsets now, so a bad one is a 400, not a broken stream.
    let first = reader.read_available().await?;
    let ndjson = [(header::CONTENT_TYPE, "application/x-ndjson")];
    if !params.follow {
        let mut body = first;
        while reader.remaining > 0 {
            let more = reader.read_available().await?;
            if more.is_empty() {
                break;
            }
            body.extend_from_slice(&more);
        }
        return Ok((ndjson, body).into_response());
    }
    let shutdown = state.shutdown.clone();
    let stream = futures::stream::unfold(
        (reader, Some(first), shutdown),
        |(mut reader, pending, mut shutdown)| async move {
            if let Some(chunk) = pending.filter(|c| !c.is_empty()) {
                return Some((
                    Ok::<_, std::io::Error>(Bytes::from(chunk)),
                    (reader, None, shutdown),
                ));
            }
            loop {
                if reader.remaining == 0 || *shutdown.borrow() {
                    return None;
                }
                match reader.read_available().await {
                    Ok(chunk) if !chunk.is_empty() => {
                        return Some((Ok(Bytes::from(chunk)), (reader, None, shutdown)));
                    }
                    Ok(_) => {
                        tokio::select! {
                            _ = reader.wait() => {}
                            _ = shutdown.changed() => return None,
                        }
                    }
                    Err(error) => {
                        tracing::warn!(reason = %error.message, "follow stream ended");
                        return None;
                    }
                }
            }
        },
    );
    Ok((ndjson, Body::from_stream(stream.boxed())).into_response())
}

struct Reader {
    storage: Storage,
    topic: String,
    cursors: Vec<Cursor>,
    remaining: usize,
}

impl Reader {
    /// Reads what is there now from every partition, as NDJSON.
    async fn read_available(&mut self) -> ApiResult<Vec<u8>> {
        let mut out = Vec::new();
        for cursor in &mut self.cursors {
            if self.remaining == 0 {
                break;
            }
            let storage = self.storage.clone();
            let topic = self.topic.clone();
            let (partition, offset) = (cursor.partition, cursor.offset);
            let max_records = self.remaining.min(10_000);
            let mut left = self.remaining;
            let (chunk, next, left) = blocking(move || {
                let fetch =
                    storage.read(&topic, partition, offset, ReadLimits::records(max_records))?;
                let mut chunk = Vec::new();
                render(&fetch, &mut chunk, &mut left)?;
                Ok((chunk, fetch.next_offset, left))
            })
            .await?;
            cursor.offset = next;
            self.remaining = left;
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Waits until some partition has records past its cursor (or a while).
    async fn wait(&self) {
        let waits = self.cursors.iter().map(|cursor| {
            Box::pin(self.storage.wait_for_records(
                &self.topic,
                cursor.partition,
                cursor.offset,
                FOLLOW_POLL,
            ))
        });
        let _ = futures::future::select_all(waits).await;
    }
}
