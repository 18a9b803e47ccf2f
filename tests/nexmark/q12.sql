-- Nexmark q12 (bids per bidder in a fixed window), on event time: the
-- published query uses processing time, which no test can check.
SELECT bidder, count(*) AS bid_count, window_start, window_end
FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
GROUP BY bidder, window_start, window_end
EMIT ON WINDOW CLOSE;
