-- title: Token and cost spend per model, label and day
-- description: Completed run steps per day (UTC), model and the value of one run label: steps, tokens in/out, cost.
-- param: label = | run label key to group by (its value per run; '' when none)
-- param: since = 1970-01-01 | steps completed at or after this time (UTC)
-- One pass over the step events (what the steps view computes, and the leased model), each
-- payload parsed once for all the fields wanted.
WITH events AS (
    SELECT run_id, step_id, kind, seq, occurred_at,
           CASE WHEN kind IN ('step_completed', 'step_leased')
                THEN json_extract(payload, ['$.output', '$.usage.tokens_in', '$.usage.tokens_out',
                                            '$.usage.cost', '$.model']) END AS f
    FROM run_events
    WHERE step_id <> '' AND kind NOT IN ('attested', 'capability_granted')
), s AS (
    SELECT run_id, step_id,
           arg_max(kind, seq) AS last_event,
           max(occurred_at) FILTER (WHERE kind IN ('step_completed', 'step_failed')) AS completed_at,
           arg_max(f[1], seq) FILTER (WHERE kind = 'step_completed') AS output,
           arg_max(CAST(f[2]->>'$' AS DOUBLE), seq) FILTER (WHERE kind = 'step_completed') AS tokens_in,
           arg_max(CAST(f[3]->>'$' AS DOUBLE), seq) FILTER (WHERE kind = 'step_completed') AS tokens_out,
           arg_max(CAST(f[4]->>'$' AS DOUBLE), seq) FILTER (WHERE kind = 'step_completed') AS cost,
           arg_max(f[5]->>'$', seq) FILTER (WHERE kind = 'step_leased') AS leased_model
    FROM events
    GROUP BY run_id, step_id
)
SELECT CAST(s.completed_at AS DATE) AS day,
       coalesce(nullif(s.output->>'model', ''), nullif(s.leased_model, ''), '(none)') AS model,
       CASE WHEN $label = '' THEN '' ELSE coalesce(r.labels->>$label, '') END AS label,
       count(*) AS steps,
       CAST(sum(coalesce(s.tokens_in, 0)) AS BIGINT) AS tokens_in,
       CAST(sum(coalesce(s.tokens_out, 0)) AS BIGINT) AS tokens_out,
       round(sum(coalesce(s.cost, 0)), 6) AS cost
FROM s
JOIN runs r USING (run_id)
WHERE s.last_event = 'step_completed' AND s.completed_at >= $since::TIMESTAMPTZ
GROUP BY ALL
ORDER BY day, model, label
