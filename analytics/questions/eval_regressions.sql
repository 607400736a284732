-- title: Eval regressions between two commits
-- description: Scenarios whose pass rate or mean score is lower at commit_b than at commit_a (results recorded at both).
-- param: commit_a = | the baseline commit
-- param: commit_b = | the candidate commit
WITH per_commit AS (
    SELECT s.pack, s.slug, r.commit,
           count(*) AS results,
           avg(CASE WHEN r.outcome = 'passed' THEN 1.0 ELSE 0.0 END) AS pass_rate,
           avg(CAST(r.metrics->>'score' AS DOUBLE)) AS mean_score
    FROM eval_results r JOIN eval_scenarios s USING (scenario_id)
    WHERE r.commit = $commit_a OR r.commit = $commit_b
    GROUP BY ALL
)
SELECT a.pack, a.slug,
       a.results AS results_a, b.results AS results_b,
       round(a.pass_rate, 4) AS pass_rate_a, round(b.pass_rate, 4) AS pass_rate_b,
       round(a.mean_score, 4) AS score_a, round(b.mean_score, 4) AS score_b,
       round(b.pass_rate - a.pass_rate, 4) AS pass_rate_delta,
       round(b.mean_score - a.mean_score, 4) AS score_delta
FROM per_commit a
JOIN per_commit b ON a.pack = b.pack AND a.slug = b.slug
WHERE a.commit = $commit_a AND b.commit = $commit_b
  AND (b.pass_rate < a.pass_rate OR b.mean_score < a.mean_score)
ORDER BY pass_rate_delta, score_delta, a.pack, a.slug
