-- title: Block failure rate and duration
-- description: Per block: executions (skipped ones left out), failures, failure rate, p50 and p95 duration in ms.
-- param: since = 1970-01-01 | executions started at or after this time (UTC)
SELECT block_name,
       count(*) AS executions,
       count(*) FILTER (WHERE state = 'failed') AS failures,
       round(count(*) FILTER (WHERE state = 'failed') / count(*), 4) AS failure_rate,
       quantile_cont(duration_ms, 0.5) AS p50_ms,
       quantile_cont(duration_ms, 0.95) AS p95_ms
FROM block_executions
WHERE state <> 'skipped' AND started_at >= $since::TIMESTAMPTZ
GROUP BY block_name
ORDER BY failure_rate DESC, block_name
