-- title: Token and cost spend per model, label and day
-- description: Completed run steps per day (UTC), model and the value of one run label: steps, tokens in/out, cost.
-- param: label = | run label key to group by (its value per run; '' when none)
-- param: since = 1970-01-01 | steps completed at or after this time (UTC)
WITH leased AS (
    SELECT run_id, step_id, arg_max(payload->>'model', seq) AS model
    FROM run_events WHERE kind = 'step_leased'
    GROUP BY run_id, step_id
)
SELECT CAST(s.completed_at AS DATE) AS day,
       coalesce(nullif(s.output->>'model', ''), nullif(l.model, ''), '(none)') AS model,
       CASE WHEN $label = '' THEN '' ELSE coalesce(r.labels->>$label, '') END AS label,
       count(*) AS steps,
       CAST(sum(coalesce(s.tokens_in, 0)) AS BIGINT) AS tokens_in,
       CAST(sum(coalesce(s.tokens_out, 0)) AS BIGINT) AS tokens_out,
       round(sum(coalesce(s.cost, 0)), 6) AS cost
FROM steps s
JOIN runs r USING (run_id)
LEFT JOIN leased l USING (run_id, step_id)
WHERE s.last_event = 'step_completed' AND s.completed_at >= $since::TIMESTAMPTZ
GROUP BY ALL
ORDER BY day, model, label
