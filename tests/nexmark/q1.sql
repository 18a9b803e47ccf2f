-- Nexmark q1 (currency conversion), RisingWave spelling.
SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid
EMIT CHANGES;
