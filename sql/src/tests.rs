//! Tests of the dialect parser.

use std::time::Duration;

use crate::{EmitMode, Error, ShowObject, Statement, parse_sql};

fn one(sql: &str) -> Statement {
    let mut statements = parse_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(statements.len(), 1, "{sql}");
    statements.remove(0)
}

#[test]
fn create_topic_with_options() {
    let Statement::CreateTopic {
        name,
        if_not_exists,
        mut options,
    } = one("CREATE TOPIC Bids WITH (partitions = 4, retention = '7 days');")
    else {
        panic!("not CREATE TOPIC")
    };
    assert_eq!(name, "bids");
    assert!(!if_not_exists);
    assert_eq!(options.take_u64("partitions").unwrap(), Some(4));
    assert_eq!(
        options.take_duration("retention").unwrap(),
        Some(Duration::from_secs(7 * 86_400))
    );
    options.finish("CREATE TOPIC", &[]).unwrap();
}

#[test]
fn create_stream_with_watermark_and_options() {
    let sql = "CREATE STREAM bid (
        auction BIGINT, bidder BIGINT, price BIGINT,
        channel VARCHAR, url VARCHAR,
        date_time TIMESTAMP,
        extra VARCHAR NOT NULL,
        WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
    ) WITH (topic = 'bids', format = 'json', partitions = 4);";
    let Statement::CreateStream(stream) = one(sql) else {
        panic!("not CREATE STREAM")
    };
    assert_eq!(stream.name, "bid");
    assert_eq!(stream.columns.len(), 7);
    assert_eq!(stream.columns[6].to_string(), "extra VARCHAR NOT NULL");
    let watermark = stream.watermark.expect("watermark");
    assert_eq!(watermark.column.value, "date_time");
    assert_eq!(watermark.delay().unwrap(), Duration::from_secs(4));
    let mut options = stream.options;
    assert_eq!(
        options.take_string("topic").unwrap().as_deref(),
        Some("bids")
    );
    assert_eq!(
        options.take_string("format").unwrap().as_deref(),
        Some("json")
    );
    assert!(stream.query.is_none());
}

#[test]
fn watermark_delays_are_checked() {
    let delay = |expr: &str| {
        let Statement::CreateStream(stream) = one(&format!(
            "CREATE STREAM s (t TIMESTAMP, WATERMARK FOR t AS {expr})"
        )) else {
            panic!()
        };
        stream.watermark.expect("watermark").delay()
    };
    assert_eq!(delay("t").unwrap(), Duration::ZERO);
    assert_eq!(
        delay("t - INTERVAL '2' MINUTE").unwrap(),
        Duration::from_secs(120)
    );
    assert_eq!(
        delay("t - INTERVAL '500 ms'").unwrap(),
        Duration::from_millis(500)
    );
    assert!(matches!(
        delay("t + INTERVAL '1' SECOND"),
        Err(Error::Unsupported(_))
    ));
    assert!(delay("t - INTERVAL '1' MONTH").is_err());
}

#[test]
fn several_statements_and_the_small_ones() {
    let statements = parse_sql(
        "SHOW TOPICS; show streams ;SHOW QUERIES;\n DESCRIBE bid; DROP STREAM IF EXISTS bid; \
         DROP TOPIC bids; STOP QUERY q_1; ;",
    )
    .unwrap();
    assert_eq!(
        statements,
        vec![
            Statement::Show(ShowObject::Topics),
            Statement::Show(ShowObject::Streams),
            Statement::Show(ShowObject::Queries),
            Statement::Describe { name: "bid".into() },
            Statement::DropStream {
                name: "bid".into(),
                if_exists: true
            },
            Statement::DropTopic {
                name: "bids".into(),
                if_exists: false
            },
            Statement::StopQuery { id: "q_1".into() },
        ]
    );
}

#[test]
fn emit_clauses() {
    let sql = "SELECT auction, window_start, window_end, count(*) AS bids
        FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
        GROUP BY auction, window_start, window_end
        EMIT ON WINDOW CLOSE EVERY INTERVAL '1' SECOND";
    let Statement::Query(query) = one(sql) else {
        panic!("not a query")
    };
    let emit = query.emit.expect("emit");
    assert_eq!(emit.mode, EmitMode::OnWindowClose);
    assert_eq!(emit.every, Some(Duration::from_secs(1)));
    assert!(query.query.to_string().contains("HOP(bid, date_time"));

    // After a bare table name, EMIT must not be taken for an alias.
    let Statement::Query(query) = one("SELECT * FROM bid EMIT CHANGES WITH (start = 'latest')")
    else {
        panic!()
    };
    let emit = query.emit.expect("emit");
    assert_eq!(emit.mode, EmitMode::Changes);
    assert_eq!(
        emit.options
            .get("start")
            .map(ToString::to_string)
            .as_deref(),
        Some("'latest'")
    );
    assert_eq!(query.query.to_string(), "SELECT * FROM bid");

    let Statement::Query(query) = one("SELECT count(*) FROM bid EMIT FINAL") else {
        panic!()
    };
    assert_eq!(query.emit.expect("emit").mode, EmitMode::OnWindowClose);
    let Statement::Query(query) = one("SELECT count(*) FROM bid EMIT COMPLETE EVERY '500 ms'")
    else {
        panic!()
    };
    assert_eq!(
        query.emit.expect("emit").every,
        Some(Duration::from_millis(500))
    );

    let Statement::Query(query) = one("SELECT count(*) FROM bid") else {
        panic!()
    };
    assert!(query.emit.is_none(), "no EMIT: a bounded query");
}

#[test]
fn flink_window_spelling_is_a_synonym() {
    let flink = "SELECT window_start, max(price) FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) GROUP BY window_start";
    let ours = "SELECT window_start, max(price) FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) GROUP BY window_start";
    let (Statement::Query(a), Statement::Query(b)) = (one(flink), one(ours)) else {
        panic!()
    };
    assert_eq!(a.query.to_string(), b.query.to_string());

    let hop = "SELECT * FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND)) EMIT CHANGES";
    let Statement::Query(query) = one(hop) else {
        panic!()
    };
    assert_eq!(
        query.query.to_string(),
        "SELECT * FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)"
    );
}

#[test]
fn inserts_and_persistent_queries() {
    let Statement::InsertValues {
        stream,
        columns,
        rows,
    } = one("INSERT INTO bid (auction, price) VALUES (1, 550), (2, 90)")
    else {
        panic!()
    };
    assert_eq!((stream.as_str(), columns.len(), rows.len()), ("bid", 2, 2));
    let Statement::InsertValues { columns, rows, .. } =
        one("INSERT INTO bid VALUES (1, 'x', '2026-01-01T00:00:00Z')")
    else {
        panic!()
    };
    assert!(columns.is_empty());
    assert_eq!(rows[0].len(), 3);

    let Statement::InsertQuery { stream, query, .. } =
        one("INSERT INTO out SELECT * FROM bid WHERE price > 5 EMIT CHANGES")
    else {
        panic!()
    };
    assert_eq!(stream, "out");
    assert_eq!(query.emit.expect("emit").mode, EmitMode::Changes);

    let Statement::CreateStream(stream) = one(
        "CREATE STREAM top_auctions WITH (topic = 'top_auctions', format = 'json') AS SELECT auction, count(*) AS n FROM bid GROUP BY auction EMIT CHANGES",
    ) else {
        panic!()
    };
    assert!(stream.columns.is_empty());
    let query = stream.query.expect("AS query");
    assert_eq!(query.emit.expect("emit").mode, EmitMode::Changes);

    let Statement::Explain(query) = one("EXPLAIN SELECT count(*) FROM bid") else {
        panic!()
    };
    assert!(query.emit.is_none());
}

#[test]
fn errors_say_where_and_what() {
    let error = parse_sql("SELECT 1;\nCREATE STREAM s (a BIGINT").unwrap_err();
    let Error::Syntax { line, .. } = &error else {
        panic!("{error}")
    };
    assert_eq!(*line, 2, "{error}");

    let error = parse_sql("SELEKT 1").unwrap_err();
    assert!(matches!(error, Error::Unsupported(_)), "{error}");
    assert!(error.to_string().contains("SELEKT"), "{error}");

    let error = parse_sql("SELECT * FROM bid EMIT ON WINDOW").unwrap_err();
    assert!(error.to_string().contains("ON WINDOW CLOSE"), "{error}");

    let error = parse_sql("CREATE TOPIC t WITH (partitions = 1, partitions = 2)").unwrap_err();
    assert!(error.to_string().contains("given twice"), "{error}");

    // Columns may be left out (a raw stream has `value`); the catalog decides.
    assert!(parse_sql("CREATE STREAM s WITH (format = 'raw')").is_ok());

    let error = parse_sql("SHOW TOPICS extra").unwrap_err();
    assert!(error.to_string().contains("unexpected"), "{error}");

    assert!(parse_sql("  ;  ").is_err());

    let Statement::CreateTopic { options, .. } = one("CREATE TOPIC t WITH (partitons = 2)") else {
        panic!()
    };
    let error = options
        .finish("CREATE TOPIC", &["partitions", "retention"])
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "unknown option \"partitons\" for CREATE TOPIC (known options: partitions, retention)"
    );
}

#[test]
fn scripts_split_at_semicolons_outside_quotes() {
    let pieces = crate::split_statements(
        "CREATE STREAM s (a VARCHAR) WITH (topic = 't;x');\n\
         -- a comment; with a semicolon\n\
         SELECT a FROM s EMIT CHANGES; SELECT ';' ;",
    )
    .expect("split");
    assert_eq!(pieces.len(), 3, "{pieces:?}");
    assert!(
        pieces[0].text.ends_with("WITH (topic = 't;x')"),
        "{pieces:?}"
    );
    assert!(!pieces[0].continuous);
    assert!(pieces[1].continuous, "{pieces:?}");
    assert_eq!(pieces[2].text, "SELECT ';'");
}

#[test]
fn hop_aggregates_are_computed_over_panes_when_exact() {
    let pane = |sql: &str| {
        let Statement::Query(query) = one(sql) else {
            panic!("not a query: {sql}")
        };
        crate::pane_query(&query).map(|(q, panes)| (q.query.to_string(), panes))
    };
    let (rewritten, panes) = pane(
        "SELECT auction, count(*) AS num, window_start AS starttime
         FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
         WHERE price > 10
         GROUP BY window_start, window_end, auction
         HAVING count(*) > 1
         EMIT ON WINDOW CLOSE",
    )
    .expect("q5's core runs over panes");
    assert_eq!(
        panes,
        crate::Panes {
            pane_ms: 2_000,
            slide_ms: 2_000,
            size_ms: 10_000
        }
    );
    assert!(
        rewritten.contains("FROM TUMBLE(bid, date_time, INTERVAL '2000 milliseconds')"),
        "{rewritten}"
    );
    // Slide and size that do not divide: panes of their gcd.
    let (_, panes) = pane(
        "SELECT count(*) FROM HOP(bid, date_time, INTERVAL '4' SECOND, INTERVAL '6' SECOND)
         GROUP BY window_start EMIT CHANGES",
    )
    .expect("panes");
    assert_eq!(panes.pane_ms, 2_000);

    // The window columns used as values keep the row-copying plan.
    for sql in [
        "SELECT count(*) FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
         WHERE window_start > TIMESTAMP '2020-01-01 00:00:00' GROUP BY window_start EMIT CHANGES",
        "SELECT max(window_end) FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
         GROUP BY window_start EMIT CHANGES",
        "SELECT count(*) FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
         GROUP BY window_end EMIT CHANGES",
        "SELECT count(*) FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
         GROUP BY date_trunc('minute', window_start) EMIT CHANGES",
        "SELECT count(*) FROM TUMBLE(bid, date_time, INTERVAL '2' SECOND)
         GROUP BY window_start EMIT CHANGES",
        "SELECT count(*) FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '2' SECOND)
         GROUP BY window_start EMIT CHANGES",
    ] {
        assert!(pane(sql).is_none(), "{sql}");
    }
}

#[test]
fn a_pane_counts_in_every_window_that_holds_it() {
    let panes = crate::Panes {
        pane_ms: 2,
        slide_ms: 4,
        size_ms: 6,
    };
    // Windows [-4,2), [0,6), [4,10), ...: pane [0,2) is in the first two,
    // pane [2,4) only in [0,6), pane [4,6) in [0,6) and [4,10).
    assert_eq!(panes.window_starts(0).collect::<Vec<_>>(), vec![-4, 0]);
    assert_eq!(panes.window_starts(2).collect::<Vec<_>>(), vec![0]);
    assert_eq!(panes.window_starts(4).collect::<Vec<_>>(), vec![0, 4]);
    assert_eq!(panes.window_starts(-2).collect::<Vec<_>>(), vec![-4]);
    let q5 = crate::Panes {
        pane_ms: 2_000,
        slide_ms: 2_000,
        size_ms: 10_000,
    };
    assert_eq!(
        q5.window_starts(10_000).collect::<Vec<_>>(),
        vec![2_000, 4_000, 6_000, 8_000, 10_000]
    );
}
