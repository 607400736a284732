-- title: Gate decisions per effect over time
-- description: Change-gate decisions per period (UTC) and effect (allow, follow_up, deny).
-- param: bucket = day | day, week or month
SELECT CAST(date_trunc($bucket, decided_at) AS DATE) AS period,
       effect,
       count(*) AS decisions
FROM gate_decisions
GROUP BY ALL
ORDER BY period, effect
