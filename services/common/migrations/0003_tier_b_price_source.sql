-- Where a Tier B chain's ATM came from (the registry's PriceSource number), so a chain
-- centred on a previous close re-centres on the first live price whatever the hysteresis.
ALTER TABLE tier_b_entries ADD COLUMN price_source text;
