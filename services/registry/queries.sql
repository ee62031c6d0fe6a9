-- name: insert_master_version
INSERT INTO master_versions (source, source_detail, trading_date, row_count, rejected_count, load_seconds)
VALUES (%(source)s, %(source_detail)s, %(trading_date)s, %(row_count)s, %(rejected_count)s, %(load_seconds)s)
RETURNING version;

-- name: copy_instruments
COPY instruments (master_version, exchange_segment, security_id, exchange, instrument_type,
                  trading_symbol, display_name, underlying_symbol, lot_size, tick_size,
                  expiry_date, expiry_flag, strike_price, option_type, series, previous_close)
FROM STDIN;

-- name: update_master_version_stats
UPDATE master_versions SET load_seconds = %(load_seconds)s, loaded_at = now() WHERE version = %(version)s;

-- name: deactivate_masters
UPDATE master_versions SET active = false WHERE active;

-- name: activate_master
UPDATE master_versions SET active = true WHERE version = %(version)s;

-- name: delete_inactive_masters
DELETE FROM master_versions WHERE NOT active AND version <> %(keep)s;

-- name: active_master
SELECT version, source, source_detail, trading_date, row_count, rejected_count, load_seconds, loaded_at
FROM master_versions WHERE active;

-- name: copy_active_instruments
-- Columns in InstrumentRecord's field order; the record holds "" for no flag or option type.
COPY (SELECT exchange_segment, security_id, exchange, instrument_type, trading_symbol, display_name,
             underlying_symbol, lot_size, tick_size, expiry_date, coalesce(expiry_flag, ''), strike_price,
             coalesce(option_type, ''), series, previous_close
      FROM instruments WHERE master_version = %(version)s)
TO STDOUT;

-- name: insert_atm_cache
INSERT INTO atm_cache (master_version, underlying_symbol, expiry_date, atm_strike, strikes_each_side,
                       strike_step, underlying_price, window_strikes)
VALUES (%(master_version)s, %(underlying_symbol)s, %(expiry_date)s, %(atm_strike)s, %(strikes_each_side)s,
        %(strike_step)s, %(underlying_price)s, %(window_strikes)s)
ON CONFLICT DO NOTHING;

-- name: count_atm_cache
SELECT count(*) AS n FROM atm_cache
WHERE underlying_symbol = %(underlying_symbol)s AND expiry_date = %(expiry_date)s;
