-- Nexmark q0 (pass-through), RisingWave spelling.
SELECT auction, bidder, price, date_time FROM bid
EMIT CHANGES;
