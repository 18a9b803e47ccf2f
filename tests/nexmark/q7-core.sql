-- The windowed core of Nexmark q7 (highest bid): the top price of each
-- 10-second tumbling window. q7 then joins it back to the bids.
SELECT max(price) AS maxprice, window_end AS date_time
FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
GROUP BY window_start, window_end
EMIT ON WINDOW CLOSE;
