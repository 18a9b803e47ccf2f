//! The peer on this machine: LaminarDB 0.33, in memory, fed the
//! Nexmark bids of Sluice's own generator as Arrow batches in-process, one
//! continuous query; prints events per CPU-second of the whole process from
//! the first push to the last output row. Windowed queries end with a
//! far-future bid and watermark, which close every window; the run stops
//! after a second without output.
//!
//! `peer-nexmark QUERY [BIDS] [BATCH_ROWS]`, QUERY one of q1, q7-core, q12,
//! q5-core.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use laminar_core::streaming::StreamingError;
use laminar_db::{FromBatch, LaminarDB, TypedSubscriptionFrame};
use nexmark::config::NexmarkConfig;
use nexmark::event::Event;

struct RowCount(usize);

impl FromBatch for RowCount {
    fn from_batch(_batch: &RecordBatch, _row: usize) -> Self {
        RowCount(1)
    }
    fn from_batch_all(batch: &RecordBatch) -> Vec<Self> {
        vec![RowCount(batch.num_rows())]
    }
}

const BASE_TIME_MS: u64 = 1_767_225_600_000;

fn process_cpu_s() -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

struct Bids {
    auction: Vec<i64>,
    bidder: Vec<i64>,
    price: Vec<i64>,
    channel: Vec<String>,
    url: Vec<String>,
    date_time: Vec<i64>,
    extra: Vec<String>,
}

fn generate(bids: usize) -> Bids {
    let config = NexmarkConfig {
        base_time: BASE_TIME_MS,
        first_rate: 10_000,
        next_rate: 10_000,
        out_of_order_group_size: 1,
        ..NexmarkConfig::default()
    };
    let mut out = Bids {
        auction: Vec::with_capacity(bids),
        bidder: Vec::with_capacity(bids),
        price: Vec::with_capacity(bids),
        channel: Vec::with_capacity(bids),
        url: Vec::with_capacity(bids),
        date_time: Vec::with_capacity(bids),
        extra: Vec::with_capacity(bids),
    };
    for event in nexmark::EventGenerator::new(config) {
        if let Event::Bid(b) = event {
            out.auction.push(b.auction as i64);
            out.bidder.push(b.bidder as i64);
            out.price.push(b.price as i64);
            out.channel.push(b.channel);
            out.url.push(b.url);
            out.date_time.push(b.date_time as i64);
            out.extra.push(b.extra);
            if out.auction.len() == bids {
                break;
            }
        }
    }
    out
}

/// The bids in batches of `rows`, cast to the source's schema.
fn batches(bids: &Bids, rows: usize, target: &Schema) -> Vec<RecordBatch> {
    let ours = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("bidder", DataType::Int64, true),
        Field::new("price", DataType::Int64, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("url", DataType::Utf8, true),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new("extra", DataType::Utf8, true),
    ]));
    let n = bids.auction.len();
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let end = (start + rows).min(n);
        let r = start..end;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(bids.auction[r.clone()].to_vec())),
            Arc::new(Int64Array::from(bids.bidder[r.clone()].to_vec())),
            Arc::new(Int64Array::from(bids.price[r.clone()].to_vec())),
            Arc::new(StringArray::from_iter_values(&bids.channel[r.clone()])),
            Arc::new(StringArray::from_iter_values(&bids.url[r.clone()])),
            Arc::new(TimestampMillisecondArray::from(
                bids.date_time[r.clone()].to_vec(),
            )),
            Arc::new(StringArray::from_iter_values(&bids.extra[r.clone()])),
        ];
        let batch = RecordBatch::try_new(ours.clone(), columns).unwrap();
        out.push(cast_to(&batch, target));
        start = end;
    }
    out
}

fn cast_to(batch: &RecordBatch, target: &Schema) -> RecordBatch {
    let columns = target
        .fields()
        .iter()
        .map(|f| {
            let column = batch.column_by_name(f.name()).expect("bid column");
            cast(column, f.data_type()).unwrap()
        })
        .collect();
    RecordBatch::try_new(Arc::new(target.clone()), columns).unwrap()
}

fn query_sql(query: &str) -> &'static str {
    match query {
        "q1" => {
            "CREATE STREAM nexmark_out AS SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid"
        }
        "q7-core" => {
            "CREATE STREAM nexmark_out AS SELECT tumble(date_time, INTERVAL '10' SECOND) AS window_start, \
             max(price) AS maxprice FROM bid GROUP BY tumble(date_time, INTERVAL '10' SECOND)"
        }
        "q12" => {
            "CREATE STREAM nexmark_out AS SELECT bidder, tumble(date_time, INTERVAL '10' SECOND) AS window_start, \
             count(*) AS bid_count FROM bid GROUP BY bidder, tumble(date_time, INTERVAL '10' SECOND)"
        }
        "q5-core" => {
            "CREATE STREAM nexmark_out AS SELECT auction, hop(date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) AS window_start, \
             count(*) AS num FROM bid GROUP BY auction, hop(date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)"
        }
        other => panic!("unknown query {other}"),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let query = args.get(1).map(String::as_str).unwrap_or("q1");
    let bids: usize = args.get(2).map_or(5_000_000, |s| s.parse().unwrap());
    let rows: usize = args.get(3).map_or(8192, |s| s.parse().unwrap());
    let windowed = query != "q1";

    let db = LaminarDB::builder().build().await.unwrap();
    db.execute(
        "CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, \
         url VARCHAR, date_time TIMESTAMP, extra VARCHAR, \
         WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)",
    )
    .await
    .unwrap();
    db.execute(query_sql(query)).await.unwrap();
    db.start().await.unwrap();
    let source = db.source_untyped("bid").unwrap();
    let schema = source.schema().clone();
    let generated = generate(bids);
    let mut input = batches(&generated, rows, &schema);
    // One far-future bid closes every window.
    let far = BASE_TIME_MS as i64 + 365 * 24 * 3_600_000;
    let closer = Bids {
        auction: vec![-1],
        bidder: vec![-1],
        price: vec![0],
        channel: vec![String::new()],
        url: vec![String::new()],
        date_time: vec![far],
        extra: vec![String::new()],
    };
    if windowed {
        input.extend(batches(&closer, 1, &schema));
    }
    let mut subscription = db.subscribe::<RowCount>("nexmark_out").await.unwrap();
    eprintln!("{} batches of {rows} rows; running {query}", input.len());

    let cpu_before = process_cpu_s();
    let started = Instant::now();
    let mut output_rows = 0usize;
    // CPU and wall time when the last output rows arrived.
    let (mut cpu_at_last, mut wall_at_last) = (0.0, 0.0);
    let total = input.len();
    let mut pushed = 0usize;
    let mut input = input.into_iter();
    let mut next = input.next();
    let mut quiet_since: Option<Instant> = None;
    loop {
        // Push while the source takes batches.
        while let Some(batch) = next.take() {
            if source.is_backpressured() {
                next = Some(batch);
                break;
            }
            match source.push_arrow(batch.clone()) {
                Ok(()) => {}
                Err(StreamingError::ChannelFull) => {
                    next = Some(batch);
                    break;
                }
                Err(e) => panic!("push_arrow failed: {e}"),
            }
            pushed += 1;
            next = input.next();
            if pushed == total && windowed {
                source.watermark(far);
            }
        }
        match tokio::time::timeout(Duration::from_millis(1), subscription.next_frame()).await {
            Ok(Ok(Some(TypedSubscriptionFrame::Rows { rows, .. }))) => {
                output_rows += rows.iter().map(|r| r.0).sum::<usize>();
                cpu_at_last = process_cpu_s() - cpu_before;
                wall_at_last = started.elapsed().as_secs_f64();
                quiet_since = None;
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => panic!("subscription closed"),
            Ok(Err(e)) => panic!("subscription failed: {e}"),
            Err(_) => {}
        }
        if pushed < total {
            continue;
        }
        if !windowed && output_rows >= bids {
            break;
        }
        // Windowed: done once the output has been quiet for a second after
        // the last push (the far-future bid closes every window).
        let since = *quiet_since.get_or_insert_with(Instant::now);
        if windowed && output_rows > 0 && since.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    let (cpu_s, wall_s) = (cpu_at_last, wall_at_last);
    // Freed only now: freeing millions of generated strings before the
    // pushes left glibc consolidating them inside the measured window.
    drop(generated);
    println!(
        "{{\"peer\":\"laminar-db 0.33.0\",\"query\":\"{query}\",\"bids\":{bids},\"batch_rows\":{rows},\
         \"output_rows\":{output_rows},\"cpu_s\":{cpu_s:.3},\"wall_s\":{wall_s:.3},\
         \"events_per_cpu_s\":{:.0}}}",
        bids as f64 / cpu_s
    );
    db.shutdown().await.ok();
}
