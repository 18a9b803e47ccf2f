-- The two windowed aggregates inside Nexmark q8 (monitor new users):
-- the people and the sellers of each 10-second tumbling window. q8 then
-- joins them on id = seller and the window.
SELECT id, name, window_start AS starttime
FROM TUMBLE(person, date_time, INTERVAL '10' SECOND)
GROUP BY id, name, window_start, window_end
EMIT ON WINDOW CLOSE;

SELECT seller, window_start AS starttime
FROM TUMBLE(auction, date_time, INTERVAL '10' SECOND)
GROUP BY seller, window_start, window_end
EMIT ON WINDOW CLOSE;
