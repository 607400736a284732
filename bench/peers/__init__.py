"""``make bench-peers`` (``python -m bench.peers [--quick] [-n REPS] [--markdown]``): LangGraph
with its SQLite checkpointer, side by side with our runtime, in one run on one machine.

LangGraph is not a dependency of ours: ``make bench-peers`` installs ``langgraph`` and
``langgraph-checkpoint-sqlite`` (``bench/peers/requirements.txt``) into a virtualenv of their own,
``.peers-venv``, and runs :mod:`bench.peers.langgraph_side` there as a subprocess (``python -I``:
nothing of this project is importable) that prints its samples as JSON. Our side runs in this
process (:mod:`bench.peers.ours`). The repetitions alternate (LangGraph, then ours, then the
machine's fsync) so that both sides see the same load; each figure is the median of the
repetitions, printed beside ours with the ratio LangGraph ÷ ours (above 1: ours takes less time).

The scenarios (N, W, P, F: the sizes in :class:`bench.peers.ours.Sizes`; ``--quick`` shrinks them):

- **chain of N steps (100 and 1,000), ms per step.** LangGraph: a ``StateGraph`` of N nodes in a
  line, each returning ``{"n": n + 1}``, compiled with ``SqliteSaver`` (a file in a temporary
  directory; WAL, ``synchronous=FULL``) and invoked with ``durability="sync"``; also compiled with
  no checkpointer (nothing durable). ``invoke`` → return, ÷ N. Ours: run_overhead's chain of
  ``noop`` observers, in-process: SubmitRun → the durable ``run_succeeded`` on the tap, ÷ N.
- **fan-out 1 → W → 1, ms per task.** LangGraph: root → W × ``Send("work", …)`` → join (W
  parallel tasks in one superstep), SqliteSaver and without; ÷ (W + 2). Ours: run_overhead's fan
  of observers, same W, 16 slots (the default ``max_concurrent_steps``), ÷ (W + 2).
- **chain of N side-effecting steps (100 and 1,000), ms per step.** LangGraph: the chain with
  SqliteSaver and ``durability="sync"`` (each checkpoint written before the next node runs),
  each node appending to a list outside the state. Ours: run_overhead's ``noop_mut`` chain: a
  mutator starts only once its lease is durable.
- **interrupt → update → resume, ms per cycle** over a P-step chain paused before every step.
  LangGraph, in-process: ``interrupt_before`` every node; ``update_state`` (patching ``n``) then
  ``invoke(None, config)``, which runs the patched node and stops at the next interrupt. Ours,
  over gRPC to a real daemon (time_travel's cycle): PatchStep sent → ResumeRun → the step's
  ``step_completed`` received on TapRun; the median of P cycles.
- **fork at step F/2 of an F-step chain (1,000), ms.** LangGraph: the chain runs to the end, the
  checkpoint before node F/2 is found in ``get_state_history`` (timed apart, in the notes);
  ``update_state`` on it, then ``invoke`` runs nodes F/2 … F-1. Ours, over gRPC (time_travel's
  branch): CreateBranchRun from step F/2 sent → the branch's ``run_succeeded`` on TapRun (the
  branch reuses F/2 steps and runs the other F/2).
- **fsync**: 200 × (write 4 KiB to a file in a temporary directory + ``os.fsync``), median µs:
  the floor of any durable step on this machine.
"""
