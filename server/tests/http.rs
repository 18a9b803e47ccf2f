//! Starts the real `sluice` binary on a free loopback port and drives the
//! log endpoints of the HTTP API, including bad input and a restart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(data_dir: &std::path::Path) -> Server {
        Server::start_with(data_dir, &[])
    }

    fn start_with(data_dir: &std::path::Path, extra: &[&str]) -> Server {
        Server::start_with_env(data_dir, extra, &[])
    }

    fn start_with_env(data_dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--max-body-bytes",
                "4096",
                "--durability",
                "os",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice server");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        let address = loop {
            line.clear();
            assert!(
                stderr.read_line(&mut line).expect("read log") > 0,
                "server exited before listening"
            );
            if let Some(at) = line.find("address=") {
                break line[at + "address=".len()..].trim().to_string();
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in stderr.lines() {});
        Server { child, address }
    }

    fn request(&self, method: &str, path: &str, content_type: &str, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.address).expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).expect("receive");
        let response = String::from_utf8(response).expect("utf8 response");
        let status: u16 = response[9..12].parse().expect("status code");
        let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        (status, body)
    }

    fn request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let extra: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let mut stream = TcpStream::connect(&self.address).expect("connect");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).expect("receive");
        let response = String::from_utf8(response).expect("utf8 response");
        let status: u16 = response[9..12].parse().expect("status code");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        (status, body)
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path, "application/json", "")
    }

    fn post(&self, path: &str, body: &str) -> (u16, String) {
        self.request("POST", path, "application/json", body)
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "server exited with {exit}");
    }
}

impl Drop for Server {
    // A failed test must not leave its server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn error_code(body: &str) -> String {
    json(body)["error"]["code"]
        .as_str()
        .expect("error code")
        .to_string()
}

#[test]
fn topics_and_records_over_http_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());

    let (status, body) = server.get("/v1/health");
    assert_eq!((status, json(&body)["status"].as_str()), (200, Some("ok")));

    let (status, body) = server.post("/v1/topics", r#"{"name":"bids","partitions":4}"#);
    assert_eq!(status, 201, "{body}");
    assert_eq!(json(&body)["partitions"].as_array().map(Vec::len), Some(4));
    let (status, body) = server.post("/v1/topics", r#"{"name":"bids","partitions":4}"#);
    assert_eq!((status, error_code(&body)), (409, "already_exists".into()));

    let (status, body) = server.post(
        "/v1/topics/bids/records",
        r#"{"records":[{"key":"foobar","value":{"price":5}},{"value":"plain text","timestamp":42,"partition":1,"headers":[{"name":"h","value":"v"}]}]}"#,
    );
    assert_eq!(status, 200, "{body}");
    let offsets = json(&body)["offsets"].clone();
    // toPositive(murmur2("foobar")) % 4, as Kafka computes it.
    assert_eq!(offsets[0]["partition"], 2);
    assert_eq!(offsets[1], serde_json::json!({"partition": 1, "offset": 0}));

    let (status, body) = server.request(
        "POST",
        "/v1/topics/bids/records",
        "application/x-ndjson",
        "{\"n\":1}\n{\"n\":2}\n",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["offsets"].as_array().map(Vec::len), Some(2));

    let (status, body) = server.get("/v1/topics/bids/records?partition=1");
    assert_eq!(status, 200);
    let first = json(body.lines().next().expect("a record"));
    assert_eq!(first["value"], "plain text");
    assert_eq!(first["timestamp"], 42);
    assert_eq!(first["headers"][0]["value"], "v");

    let (status, body) = server.get("/v1/topics/bids/records");
    assert_eq!(status, 200);
    assert_eq!(body.lines().count(), 4);
    // A follow read with a limit ends once it has the records.
    let (status, body) = server.get("/v1/topics/bids/records?follow=true&limit=4");
    assert_eq!(status, 200);
    assert_eq!(body.lines().count(), 4, "{body}");

    // Bad input: each is a 4xx with the error shape, and nothing changes.
    for (method, path, content_type, payload, want_status, want_code) in [
        (
            "POST",
            "/v1/topics",
            "application/json",
            "{not json",
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/topics",
            "application/json",
            r#"{"name":"a b"}"#,
            400,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/topics",
            "application/json",
            r#"{"name":"x","partitions":"many"}"#,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/topics/nope/records",
            "application/json",
            r#"{"records":[{"value":1}]}"#,
            404,
            "not_found",
        ),
        (
            "POST",
            "/v1/topics/bids/records",
            "application/json",
            r#"{"records":[]}"#,
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/topics/bids/records",
            "application/json",
            r#"{"records":[{"value":1,"partition":9}]}"#,
            404,
            "no_such_partition",
        ),
        (
            "POST",
            "/v1/topics/bids/records",
            "application/x-ndjson",
            "{\"ok\":1}\nnot json\n",
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/topics/bids/records?partition=0&offset=99",
            "application/json",
            "",
            400,
            "offset_out_of_range",
        ),
        (
            "GET",
            "/v1/topics/bids/records?offset=1",
            "application/json",
            "",
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/topics/nope",
            "application/json",
            "",
            404,
            "not_found",
        ),
        (
            "GET",
            "/v1/nothing-here",
            "application/json",
            "",
            404,
            "not_found",
        ),
    ] {
        let (status, body) = server.request(method, path, content_type, payload);
        assert_eq!(
            (status, error_code(&body)),
            (want_status, want_code.to_string()),
            "{method} {path}: {body}"
        );
    }
    let huge = format!(r#"{{"records":[{{"value":"{}"}}]}}"#, "x".repeat(8192));
    let (status, body) = server.post("/v1/topics/bids/records", &huge);
    assert_eq!((status, error_code(&body)), (413, "body_too_large".into()));

    let (_, body) = server.get("/v1/topics/bids");
    let ends: Vec<u64> = json(&body)["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["end_offset"].as_u64().expect("end offset"))
        .collect();
    assert_eq!(ends.iter().sum::<u64>(), 4, "bad requests wrote nothing");

    server.stop();
    let server = Server::start(dir.path());
    let (status, body) = server.get("/v1/topics/bids/records");
    assert_eq!(status, 200);
    assert_eq!(body.lines().count(), 4, "records survive a restart");
    let (status, _) = server.request("DELETE", "/v1/topics/bids", "application/json", "");
    assert_eq!(status, 200);
    let (status, body) = server.get("/v1/topics");
    assert_eq!(
        (status, json(&body)["topics"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    server.stop();
}

#[test]
fn sql_over_http_answers_rows_messages_and_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let sql = |text: &str| server.post("/v1/sql", &serde_json::json!({ "sql": text }).to_string());

    let (status, body) = sql(
        "CREATE STREAM bid (auction BIGINT, price BIGINT, date_time TIMESTAMP) \
         WITH (topic = 'bids', partitions = 2); \
         INSERT INTO bid VALUES (1, 10, '2026-01-01T00:00:00Z'), (2, 20, '2026-01-01T00:00:11Z');",
    );
    assert_eq!(status, 200, "{body}");
    let answer = json(&body);
    assert_eq!(answer["results"][0]["status"], "ok");
    assert_eq!(
        answer["results"][1]["rows"].as_array().map(Vec::len),
        Some(2)
    );

    let (status, body) = sql("SELECT window_start, count(*) AS n, max(price) AS top \
         FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) GROUP BY window_start ORDER BY 1");
    assert_eq!(status, 200, "{body}");
    let result = &json(&body)["results"][0];
    assert_eq!(result["columns"][1]["name"], "n");
    assert_eq!(
        result["rows"],
        serde_json::json!([
            ["2026-01-01T00:00:00", 1, 10],
            ["2026-01-01T00:00:10", 1, 20]
        ])
    );

    // A record that does not decode is reported with the answer.
    let (status, body) = server.post(
        "/v1/topics/bids/records",
        r#"{"records":[{"value":"{oops"}]}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = sql("SELECT count(price) FROM bid");
    assert_eq!(status, 200, "{body}");
    let result = &json(&body)["results"][0];
    assert_eq!(result["decode_errors"], 1);
    assert_eq!(result["rows"], serde_json::json!([[2]]));

    for (text, status, code) in [
        ("SELEKT 1", 400, "unsupported"),
        ("SELECT * FROM nope", 404, "not_found"),
        (
            "SELECT auction FROM bid EMIT ON WINDOW CLOSE",
            400,
            "unsupported",
        ),
        ("INSERT INTO bid VALUES ('x', 1, 2)", 400, "invalid_input"),
        ("SELECT * FROM bid WHERE (", 400, "sql_syntax"),
    ] {
        let (got, body) = sql(text);
        assert_eq!(
            (got, error_code(&body)),
            (status, code.to_string()),
            "{text}: {body}"
        );
    }
    let (status, body) = server.post("/v1/sql", r#"{"query": "SELECT 1"}"#);
    assert_eq!((status, error_code(&body)), (400, "bad_request".into()));
    server.stop();
}

#[test]
fn a_sql_request_past_its_timeout_is_cancelled_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir.path(), &["--query-timeout", "1"]);
    // A query that would run for hours.
    let (status, body) = server.post(
        "/v1/sql",
        r#"{"sql": "SELECT count(*) FROM range(1000000000000)"}"#,
    );
    assert_eq!(
        (status, error_code(&body)),
        (408, "timeout".into()),
        "{body}"
    );
    let (status, body) = server.post("/v1/sql", r#"{"sql": "SELECT 1 + 1 AS two"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["results"][0]["rows"], serde_json::json!([[2]]));
    server.stop();
}

#[test]
fn a_push_query_streams_a_header_and_rows_as_ndjson() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let sql = |text: &str| server.post("/v1/sql", &serde_json::json!({ "sql": text }).to_string());
    let (status, body) = sql("CREATE STREAM s (id BIGINT, v BIGINT) WITH (topic = 't'); \
         INSERT INTO s VALUES (1, 10), (2, 20), (3, 30);");
    assert_eq!(status, 200, "{body}");
    // LIMIT ends the push query, and so the response.
    let (status, body) = server.post(
        "/v1/query",
        r#"{"sql": "SELECT id, v + 1 AS w FROM s WHERE v > 10 LIMIT 2 EMIT CHANGES EVERY INTERVAL '10' MILLISECOND"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let lines: Vec<serde_json::Value> = body.lines().map(json).collect();
    assert_eq!(lines.len(), 3, "{body}");
    assert_eq!(lines[0]["header"]["columns"][1]["name"], "w");
    assert!(lines[0]["header"]["query_id"].is_string());
    let mut rows: Vec<serde_json::Value> = lines[1..].to_vec();
    rows.sort_by_key(|r| r[0].as_i64());
    assert_eq!(
        rows,
        vec![serde_json::json!([2, 21]), serde_json::json!([3, 31])]
    );

    // The same as server-sent events when asked.
    let (status, body) = server.request_with(
        "POST",
        "/v1/query",
        &[("Accept", "text/event-stream")],
        r#"{"sql": "SELECT id FROM s WHERE v > 10 LIMIT 2 EMIT CHANGES EVERY INTERVAL '10' MILLISECOND"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let body = dechunk(&body);
    let events: Vec<serde_json::Value> = body
        .split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            json(
                event
                    .trim()
                    .strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not an event: {event:?} in {body:?}")),
            )
        })
        .collect();
    assert_eq!(events.len(), 3, "{body}");
    assert!(events[0]["header"]["query_id"].is_string(), "{body}");

    let (status, body) = server.post(
        "/v1/query",
        r#"{"sql": "SELECT id FROM s ORDER BY id EMIT CHANGES"}"#,
    );
    assert_eq!(
        (status, error_code(&body)),
        (400, "unsupported".into()),
        "{body}"
    );
    let (status, body) = server.post("/v1/query", r#"{"sql": "SELECT id FROM s"}"#);
    assert_eq!(
        (status, error_code(&body)),
        (400, "invalid_input".into()),
        "{body}"
    );
    server.stop();
}

#[test]
fn with_a_token_every_endpoint_but_health_needs_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(dir.path(), &["--auth-token", "s3cret"]);
    let (status, _) = server.get("/v1/health");
    assert_eq!(status, 200);
    let (status, body) = server.get("/v1/topics");
    assert_eq!((status, error_code(&body)), (401, "unauthorized".into()));
    let (status, body) = server.request_with(
        "GET",
        "/v1/topics",
        &[("Authorization", "Bearer wrong")],
        "",
    );
    assert_eq!((status, error_code(&body)), (401, "unauthorized".into()));
    let (status, body) = server.request_with(
        "GET",
        "/v1/topics",
        &[("Authorization", "Bearer s3cret")],
        "",
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.get("/v1/no/such/endpoint");
    assert_eq!(status, 401, "unknown paths do not reveal themselves either");
    server.stop();
}

#[test]
fn metrics_export_the_logs_offsets_in_prometheus_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (status, _) = server.post("/v1/topics", r#"{"name":"m","partitions":2}"#);
    assert_eq!(status, 201);
    let (status, _) = server.post(
        "/v1/topics/m/records",
        r#"{"records":[{"value":"a","partition":1},{"value":"b","partition":1}]}"#,
    );
    assert_eq!(status, 200);
    let (status, body) = server.get("/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("# TYPE sluice_partition_end_offset counter"),
        "{body}"
    );
    assert!(
        body.contains(r#"sluice_partition_end_offset{topic="m",partition="1"} 2"#),
        "{body}"
    );
    assert!(
        body.contains(r#"sluice_partition_end_offset{topic="m",partition="0"} 0"#),
        "{body}"
    );
    server.stop();
}

#[test]
fn the_shell_runs_scripts_and_says_by_its_exit_code_whether_they_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let url = format!("http://{}", server.address);
    let shell = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("shell")
            .args(["--url", &url])
            .args(args)
            .output()
            .expect("run the shell");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, out, err) = shell(&[
        "-c",
        "CREATE STREAM s (id BIGINT, name VARCHAR) WITH (topic = 't'); \
         INSERT INTO s VALUES (1, 'one'), (2, 'two'); \
         SELECT id, name FROM s ORDER BY id;",
    ]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("created stream s"), "{out}");
    assert!(
        out.contains("| 2  | two  |") || out.contains("two"),
        "{out}"
    );
    assert!(out.contains("(2 rows)"), "{out}");

    let (code, out, _) = shell(&[
        "--format",
        "csv",
        "-c",
        "SELECT id, name FROM s ORDER BY id",
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(out, "id,name\n1,one\n2,two\n");

    // A push query prints rows as they arrive; LIMIT ends it.
    let (code, out, err) = shell(&[
        "--format",
        "json",
        "-c",
        "SELECT id FROM s LIMIT 2 EMIT CHANGES EVERY INTERVAL '10' MILLISECOND",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");

    let script = dir.path().join("bad.sql");
    std::fs::write(&script, "SELECT 1;\nSELECT * FROM nope;\nSELECT 2;\n").expect("write");
    let (code, out, err) = shell(&["-f", script.to_str().expect("path")]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("unknown stream \"nope\""), "{err}");
    assert_eq!(
        out.matches("(1 row)").count(),
        1,
        "stops at the failure: {out}"
    );
    server.stop();

    let (code, _, err) = shell(&["-c", "SELECT 1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot reach the server"), "{err}");
}

#[test]
fn produce_loads_lines_and_consume_prints_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The server takes bodies of 4 KiB at most: 50 records per request.
    let server = Server::start(dir.path());
    let url = format!("http://{}", server.address);
    let sluice = |args: &[&str], stdin: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .args(["--url", &url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sluice");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let output = child.wait_with_output().expect("wait");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (status, body) = server.post("/v1/topics", r#"{"name": "events", "partitions": 3}"#);
    assert_eq!(status, 201, "{body}");

    // NDJSON from standard input, keyed; a line that is not JSON is kept.
    let mut input: String = (0..2_500)
        .map(|i| format!("{{\"user\": \"u{}\", \"n\": {i}}}\n", i % 7))
        .collect();
    input.push_str("not json\n");
    let (code, _, err) = sluice(
        &["produce", "events", "--key-field", "user", "--batch", "50"],
        &input,
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("produced 2501 records"), "{err}");
    assert!(err.contains("1 lines were not JSON"), "{err}");

    // From the beginning: every line, byte for byte; one key, one partition.
    let (code, out, err) = sluice(&["consume", "events", "--from-beginning"], "");
    assert_eq!(code, Some(0), "{err}");
    let mut got: Vec<&str> = out.lines().collect();
    let mut want: Vec<&str> = input.lines().collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
    let (_, out, _) = sluice(
        &["consume", "events", "--from-beginning", "--format", "json"],
        "",
    );
    let mut partitions_of_u3 = std::collections::HashSet::new();
    for line in out.lines() {
        let record = json(line);
        if record["key"] == "u3" {
            partitions_of_u3.insert(record["partition"].as_u64());
        }
    }
    assert_eq!(partitions_of_u3.len(), 1, "a key stays in one partition");

    // From an offset, with a limit; from the end there is nothing new.
    let (code, out, _) = sluice(
        &[
            "consume",
            "events",
            "--partition",
            "0",
            "--offset",
            "2",
            "--limit",
            "3",
            "--format",
            "json",
        ],
        "",
    );
    assert_eq!(code, Some(0));
    let offsets: Vec<u64> = out
        .lines()
        .map(|l| json(l)["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(offsets, vec![2, 3, 4]);
    let (code, out, err) = sluice(&["consume", "events"], "");
    assert_eq!((code, out.as_str()), (Some(0), ""));
    assert!(err.contains("--from-beginning"), "{err}");

    // CSV with a header naming the key column.
    let (code, _, err) = sluice(
        &[
            "produce",
            "events",
            "--format",
            "csv",
            "--header",
            "--key-field",
            "b",
        ],
        "a,b\n1,x\n2,\"y,z\"\n",
    );
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = sluice(
        &["consume", "events", "--from-beginning", "--format", "json"],
        "",
    );
    assert!(out.contains(r#""key":"y,z","value":"2,\"y,z\"""#), "{out}");

    // Following: records produced afterwards arrive, from every partition.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["consume", "events", "--follow", "--url", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run sluice consume --follow");
    let mut lines = BufReader::new(follower.stdout.take().expect("stdout")).lines();
    // Its requests are open once a produce reaches it; keep producing
    // until the first line arrives.
    let fresh: String = (0..30).map(|i| format!("{{\"fresh\": {i}}}\n")).collect();
    let producer = {
        let url = url.clone();
        std::thread::spawn(move || {
            for _ in 0..3 {
                std::thread::sleep(std::time::Duration::from_millis(300));
                let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
                    .args(["produce", "events", "--url", &url])
                    .stdin(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("produce");
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(fresh.as_bytes())
                    .expect("write");
                child.wait().expect("wait");
            }
        })
    };
    let first = lines.next().expect("a line").expect("read");
    assert!(first.starts_with("{\"fresh\": "), "{first}");
    producer.join().expect("producer");
    follower.kill().expect("stop the follower");
    follower.wait().expect("wait");

    // Bad input: an unknown topic, a key column without a header.
    let (code, _, err) = sluice(&["produce", "nope"], "{}\n");
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown topic"), "{err}");
    let (code, _, err) = sluice(
        &["produce", "events", "--format", "csv", "--key-field", "b"],
        "",
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("needs --header"), "{err}");
    let (code, _, err) = sluice(&["consume", "nope", "--from-beginning"], "");
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown topic"), "{err}");
    server.stop();
}

#[test]
fn the_ingest_bench_runs_through_a_server_it_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "bench",
            "ingest",
            "--http",
            "--records",
            "3000",
            "--batch",
            "100",
        ])
        .args(["--writers", "3", "--durability", "os", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run the bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report = json(String::from_utf8_lossy(&output.stdout).trim());
    assert_eq!(report["http"], true);
    assert_eq!(report["records"], 3000);
    assert!(report["records_per_s"].as_f64().expect("rate") > 0.0);
    assert!(report["library_records_per_s"].as_f64().expect("rate") > 0.0);
}

/// The shell on a pseudo-terminal, as a person uses it.
struct Terminal {
    master: std::fs::File,
    output: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: String,
    child: Child,
}

impl Terminal {
    fn spawn(args: &[&str], envs: &[(&str, &std::path::Path)]) -> Terminal {
        use std::os::fd::FromRawFd;
        use std::os::unix::process::CommandExt;
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes the two descriptors it opens; no name,
        // termios or size is passed.
        let opened = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(opened, 0, "openpty");
        // SAFETY: both descriptors were just opened and are owned here.
        let (master, slave) = unsafe {
            (
                std::fs::File::from_raw_fd(master),
                std::fs::File::from_raw_fd(slave),
            )
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .args(args)
            .envs(envs.iter().copied())
            .stdin(slave.try_clone().expect("dup"))
            .stdout(slave.try_clone().expect("dup"))
            .stderr(slave);
        // SAFETY: only async-signal-safe calls between fork and exec: a new
        // session whose controlling terminal is the pty, so that Ctrl-C on
        // it sends SIGINT to the shell.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start the shell");
        let mut reader = master.try_clone().expect("dup master");
        let (sender, output) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buffer) {
                if sender.send(buffer[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Terminal {
            master,
            output,
            seen: String::new(),
            child,
        }
    }

    fn type_keys(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).expect("type");
    }

    /// Waits until `text` appears after what was already expected; returns
    /// what came before it.
    fn expect(&mut self, text: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(at) = self.seen.find(text) {
                let before = self.seen[..at].to_string();
                self.seen.drain(..at + text.len());
                return before;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.seen.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => panic!("waited for {text:?}; the terminal shows:\n{}", self.seen),
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_interactive_shell_runs_statements_and_ctrl_c_cancels_a_push_query() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let url = format!("http://{}", server.address);
    let history = dir.path().join("history");
    let mut shell = Terminal::spawn(&["shell", "--url", &url], &[("SLUICE_HISTORY", &history)]);
    shell.expect("sluice> ");
    // A statement over two lines.
    shell.type_keys("CREATE STREAM s (id BIGINT)\r");
    shell.expect("...> ");
    shell.type_keys("WITH (topic = 't');\r");
    shell.expect("created stream s");
    shell.expect("sluice> ");

    // A push query prints rows as they arrive; Ctrl-C cancels it, not the shell.
    shell.type_keys("SELECT id FROM s EMIT CHANGES EVERY INTERVAL '20' MILLISECOND;\r");
    shell.expect("id");
    let (status, body) = server.post("/v1/sql", r#"{"sql": "INSERT INTO s VALUES (7), (8)"}"#);
    assert_eq!(status, 200, "{body}");
    shell.expect("7");
    shell.expect("8");
    shell.type_keys("\u{3}");
    shell.expect("cancelled");
    shell.expect("sluice> ");

    shell.type_keys("\\timing\r");
    shell.expect("Timing is on.");
    shell.type_keys("SELECT 41 + 1 AS answer;\r");
    let table = shell.expect("(1 row)");
    assert!(table.contains("42"), "{table}");
    shell.expect("Time: ");
    // Up-arrow recalls the last statement.
    shell.type_keys("\u{1b}[A\r");
    let table = shell.expect("(1 row)");
    assert!(table.contains("42"), "{table}");
    // Left-arrow moves into the line; what is typed there is inserted.
    shell.type_keys("SELECT 2 AS tw;\u{1b}[Do\r");
    let table = shell.expect("(1 row)");
    assert!(table.contains("two"), "{table}");
    // A failing statement says why and the shell goes on.
    shell.type_keys("SELECT * FROM nope;\r");
    shell.expect("unknown stream \"nope\"");
    shell.expect("sluice> ");
    shell.type_keys("\\q\r");
    let status = shell.child.wait().expect("wait for the shell");
    assert_eq!(
        status.code(),
        Some(0),
        "a session's errors are not its exit code"
    );
    // Statements, multi-line ones whole, are kept for the next session.
    let kept = std::fs::read_to_string(&history).expect("history file");
    assert!(kept.contains("SELECT 41 + 1 AS answer;"), "{kept}");
    assert!(kept.contains("CREATE STREAM s (id BIGINT)"), "{kept}");
    server.stop();
}

#[test]
fn a_config_file_sets_what_flags_and_environment_leave_unset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "auth_token = \"from-file\"\nmax_push_queries = 1\nquery_timeout = 5\n\
         log_compression = \"zstd\"\n",
    )
    .expect("write config");
    // The environment's token wins over the file's; the file's push-query
    // cap applies (no flag or variable sets it).
    let server = Server::start_with_env(
        dir.path(),
        &["--config", config.to_str().expect("path")],
        &[("SLUICE_AUTH_TOKEN", "from-env")],
    );
    let with_token = |token: &str, method: &str, path: &str, body: &str| {
        let authorization = format!("Bearer {token}");
        server.request_with(method, path, &[("Authorization", &authorization)], body)
    };
    assert_eq!(with_token("from-file", "GET", "/v1/topics", "").0, 401);
    assert_eq!(with_token("from-env", "GET", "/v1/topics", "").0, 200);
    let (status, body) = with_token(
        "from-env",
        "POST",
        "/v1/sql",
        r#"{"sql": "CREATE STREAM s (id BIGINT) WITH (topic = 't')"}"#,
    );
    assert_eq!(status, 200, "{body}");

    // One push query at a time: a second is refused with 429 until the
    // first client goes away.
    let push = r#"{"sql": "SELECT id FROM s EMIT CHANGES"}"#;
    // Opens a push query on a connection of its own; the connection and
    // whether the answer was 200.
    let open_push = || {
        let mut stream = TcpStream::connect(&server.address).expect("connect");
        write!(
            stream,
            "POST /v1/query HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer from-env\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{push}",
            push.len()
        )
        .expect("send");
        let mut header = [0u8; 12];
        let ok = stream.read_exact(&mut header).is_ok() && &header == b"HTTP/1.1 200";
        (stream, ok)
    };
    let (first, ok) = open_push();
    assert!(ok, "the first push query is served");
    let (status, body) = with_token("from-env", "POST", "/v1/query", push);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too_many_push_queries"), "{body}");
    drop(first);
    let freed = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        open_push().1
    });
    assert!(
        freed,
        "a disconnected client's push query gives its slot back"
    );

    // A config file that says something unknown (a key, a codec) is
    // refused at start, naming it.
    for (text, named) in [
        ("listen_port = 80\n", &["listen_port"][..]),
        (
            "log_compression = \"snappy\"\n",
            &["log_compression", "snappy"][..],
        ),
    ] {
        std::fs::write(&config, text).expect("write config");
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["server", "--config", config.to_str().expect("path")])
            .output()
            .expect("run");
        assert!(!output.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(named.iter().all(|n| stderr.contains(n)), "{stderr}");
    }
}

/// Reads `path` with `follow=true` until `count` records have come.
fn follow(address: &str, path: &str, count: usize) -> Vec<serde_json::Value> {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut records = Vec::new();
    // Chunk sizes and headers aside, each record is a line of its own.
    for line in BufReader::new(stream).lines() {
        let line = line.expect("a line before the timeout");
        if line.starts_with('{') {
            records.push(json(&line));
            if records.len() == count {
                break;
            }
        }
    }
    records
}

#[test]
fn persistent_queries_over_http_survive_a_restart_without_duplicate_or_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let sql = |server: &Server, text: &str| {
        server.post("/v1/sql", &serde_json::json!({ "sql": text }).to_string())
    };
    let (status, body) = sql(
        &server,
        "CREATE STREAM clicks (page VARCHAR, ts TIMESTAMP, \
           WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (topic = 'clicks')",
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post(
        "/v1/queries",
        &serde_json::json!({ "sql": "CREATE STREAM views AS \
            SELECT page, window_start, count(*) AS n \
            FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) \
            GROUP BY page, window_start, window_end \
            EMIT ON WINDOW CLOSE EVERY INTERVAL '20' MILLISECOND" })
        .to_string(),
    );
    assert_eq!(status, 201, "{body}");
    let created = json(&body);
    assert_eq!(created["status"], "running");
    assert_eq!(created["sink"], "views");
    let id = created["id"].as_str().expect("id").to_string();
    let (status, body) = server.get("/v1/queries");
    assert_eq!(status, 200);
    assert!(body.contains(&id), "{body}");

    // Three clicks in each 10-second window from `from` to `to`; each
    // window closes when a click 11 s past its start arrives.
    let clicks = |server: &Server, from: u32, to: u32| {
        let values: Vec<String> = (from..to)
            .flat_map(|w| {
                (1..=3).map(move |s| {
                    format!(
                        "('/p', TIMESTAMP '2026-01-01 00:00:00' + INTERVAL '{}' SECOND)",
                        w * 10 + s
                    )
                })
            })
            .collect();
        let (status, body) = sql(
            server,
            &format!("INSERT INTO clicks VALUES {}", values.join(", ")),
        );
        assert_eq!(status, 200, "{body}");
    };
    clicks(&server, 0, 6);
    let first = follow(
        &server.address,
        "/v1/topics/views/records?partition=0&follow=true",
        5,
    );
    let window = |record: &serde_json::Value| {
        let row = json(record["value"].as_str().expect("value"));
        assert_eq!(row["n"], 3, "{row}");
        row["window_start"]
            .as_str()
            .expect("window_start")
            .to_string()
    };
    let seen: Vec<String> = first.iter().map(window).collect();

    // SIGTERM, start again: the query resumes from its last commit.
    server.stop();
    let server = Server::start(dir.path());
    let (status, body) = server.get(&format!("/v1/queries/{id}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["status"], "running", "{body}");
    clicks(&server, 6, 11);
    // A reader that reconnects goes on from the next offset.
    let rest = follow(
        &server.address,
        "/v1/topics/views/records?partition=0&offset=5&follow=true",
        5,
    );
    assert_eq!(rest[0]["offset"], 5);
    let seen: Vec<String> = seen.into_iter().chain(rest.iter().map(window)).collect();
    let mut expected = seen.clone();
    expected.sort();
    expected.dedup();
    assert_eq!(seen, expected, "ten windows, in order, each once");
    assert_eq!(seen.len(), 10);
    let (_, body) = server.get("/v1/topics/views/records?partition=0");
    assert_eq!(
        body.lines().count(),
        10,
        "no duplicate after the restart: {body}"
    );

    // Progress, stop, and the errors. A trigger's progress is published
    // just after its output commits, so the reader above can get ahead of
    // it: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let body = loop {
        let (_, body) = server.get(&format!("/v1/queries/{id}"));
        if json(&body)["progress"]["batch_id"].as_u64().is_some()
            || std::time::Instant::now() > deadline
        {
            break body;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        json(&body)["progress"]["batch_id"].as_u64().is_some(),
        "{body}"
    );
    let (status, body) = server.request(
        "DELETE",
        &format!("/v1/queries/{id}"),
        "application/json",
        "",
    );
    assert_eq!(status, 200, "{body}");
    let (_, body) = server.get(&format!("/v1/queries/{id}"));
    assert_eq!(json(&body)["status"], "stopped", "{body}");
    let (status, body) = server.get("/v1/queries/q999");
    assert_eq!(
        (status, error_code(&body)),
        (404, "not_found".into()),
        "{body}"
    );
    let (status, body) = server.post(
        "/v1/queries",
        r#"{"sql": "SELECT page FROM clicks EMIT CHANGES"}"#,
    );
    assert_eq!(status, 400, "a push query has no sink: {body}");
    let (status, body) = server.post("/v1/queries", r#"{"sql": "CREATE STREAM x AS SELEC"}"#);
    assert_eq!(status, 400, "{body}");
    server.stop();
}

#[test]
fn concurrent_producers_and_queries_lose_no_acknowledged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = std::sync::Arc::new(Server::start(dir.path()));
    let (status, body) = server.post(
        "/v1/sql",
        r#"{"sql": "CREATE STREAM e (writer BIGINT, n BIGINT) WITH (topic = 'e', partitions = 3)"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let server = server.clone();
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                for request in 0..25 {
                    let records: Vec<serde_json::Value> = (0..20)
                        .map(|i| serde_json::json!({"value": {"writer": writer, "n": request * 20 + i}}))
                        .collect();
                    let (status, body) = server.post(
                        "/v1/topics/e/records",
                        &serde_json::json!({ "records": records }).to_string(),
                    );
                    assert_eq!(status, 200, "{body}");
                    for position in json(&body)["offsets"].as_array().expect("offsets") {
                        acknowledged.push((position["partition"].as_u64(), position["offset"].as_u64()));
                    }
                }
                acknowledged
            })
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let server = server.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let (status, body) = server.post(
                        "/v1/sql",
                        r#"{"sql": "SELECT count(*) AS c, count(DISTINCT writer) AS w FROM e"}"#,
                    );
                    assert_eq!(status, 200, "{body}");
                }
            })
        })
        .collect();
    let mut acknowledged: Vec<_> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    for reader in readers {
        reader.join().expect("reader");
    }
    acknowledged.sort();
    acknowledged.dedup();
    assert_eq!(acknowledged.len(), 2_000, "every position distinct");
    let (_, body) = server.post("/v1/sql", r#"{"sql": "SELECT _partition, _offset FROM e"}"#);
    let mut stored: Vec<(Option<u64>, Option<u64>)> = json(&body)["results"][0]["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| (row[0].as_u64(), row[1].as_u64()))
        .collect();
    stored.sort();
    assert_eq!(
        stored, acknowledged,
        "every acknowledged record is readable"
    );
    let (_, body) = server.post(
        "/v1/sql",
        r#"{"sql": "SELECT writer, count(DISTINCT n) AS c FROM e GROUP BY writer ORDER BY writer"}"#,
    );
    assert_eq!(
        json(&body)["results"][0]["rows"],
        serde_json::json!([[0, 500], [1, 500], [2, 500], [3, 500]])
    );
}

#[test]
fn the_push_latency_bench_reads_every_row_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", "push", "--seconds", "1", "--rate", "50", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run the bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report = json(String::from_utf8_lossy(&output.stdout).trim());
    assert_eq!(report["bench"], "push-latency");
    assert_eq!(report["rows"], 50);
    assert!(report["p99_ms"].as_f64().expect("p99") >= report["p50_ms"].as_f64().expect("p50"));
}

#[test]
fn a_columnar_topic_takes_json_records_and_reads_back_json_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path());
    let (status, body) = server.post(
        "/v1/sql",
        r#"{"sql": "CREATE STREAM cols (id BIGINT NOT NULL, name VARCHAR) WITH (format = 'arrow')"}"#,
    );
    assert_eq!(status, 200, "{body}");
    // Values are decoded once, here, into the stream's columns.
    let (status, body) = server.post(
        "/v1/topics/cols/records",
        r#"{"records":[{"value":{"id":1,"name":"a"},"timestamp":42},{"value":{"id":2}}]}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["offsets"][1]["offset"], 1);
    // A value that does not fit fails the request; nothing of it is written.
    let (status, body) = server.post(
        "/v1/topics/cols/records",
        r#"{"records":[{"value":{"id":3}},{"value":{"id":"three"}}]}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        json(&body)["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("record 2")),
        "{body}"
    );
    let (status, body) = server.post(
        "/v1/topics/cols/records",
        r#"{"records":[{"value":{"id":4},"headers":[{"name":"h","value":"v"}]}]}"#,
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.post(
        "/v1/topics/cols/records",
        r#"{"records":[{"value":{"id":4},"partition":7}]}"#,
    );
    assert_eq!(status, 404, "{body}");

    // Readers of records get each row as a JSON object.
    let (status, body) = server.get("/v1/topics/cols/records?partition=0&offset=1");
    assert_eq!(status, 200, "{body}");
    let lines: Vec<serde_json::Value> = body.lines().map(json).collect();
    assert_eq!(lines.len(), 1, "{body}");
    assert_eq!(lines[0]["offset"], 1);
    let value: serde_json::Value =
        serde_json::from_str(lines[0]["value"].as_str().expect("text")).expect("a JSON row");
    assert_eq!(value, serde_json::json!({"id": 2}));
    let (status, body) = server.get("/v1/topics/cols/records?partition=0");
    assert_eq!(status, 200, "{body}");
    let first = json(body.lines().next().expect("a row"));
    assert_eq!(first["timestamp"], 42);
    assert_eq!(first["value"], r#"{"id":1,"name":"a"}"#);

    let (status, body) = server.post("/v1/sql", r#"{"sql": "SELECT count(*) AS n FROM cols"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["results"][0]["rows"][0][0], 2);
    server.stop();
}
