-- title: Slowest steps
-- description: Completed or failed run steps by duration (last lease to completion), slowest first.
-- param: limit = 20 | how many steps
SELECT s.run_id, s.step_id, s.attempt, s.last_event,
       date_diff('millisecond', s.leased_at, s.completed_at) AS duration_ms,
       s.leased_at, s.completed_at
FROM steps s
WHERE s.leased_at IS NOT NULL AND s.completed_at IS NOT NULL
ORDER BY duration_ms DESC, s.run_id, s.step_id
LIMIT $limit::INTEGER
