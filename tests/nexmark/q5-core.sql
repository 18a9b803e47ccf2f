-- The windowed core of Nexmark q5 (hot items): bids per auction in
-- 10-second windows sliding every 2 seconds. q5 then joins this with its
-- own per-window maximum, which needs window joins.
SELECT auction, count(*) AS num, window_start AS starttime
FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
GROUP BY window_start, window_end, auction
EMIT ON WINDOW CLOSE;
