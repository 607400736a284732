-- title: Workflows per state per project
-- description: Finished workflows per project and state (completed, failed), and those in flight.
SELECT project, state, count(*) AS workflows
FROM (
    SELECT project, state FROM workflows WHERE block_count > 0
    UNION ALL
    SELECT project, 'in_flight' AS state FROM in_flight_workflows
)
GROUP BY ALL
ORDER BY project, state
