"""Neutral helpers the trace judges share. Nothing here knows a rule by name: the rules in
`rules/` call these from their `judge()` methods. Every function is a pure function of a
`Trace`; results are cached on the trace object (`positions.trace_cache`), which is never
modified otherwise.

- `synthetic`: hand-built traces (`SyntheticRun`) and the `TraceExample` rules declare;
- `positions`: ranges and position arrays, the stream's length, the per-trace cache;
- `order`: happens-before across ranks (`Timeline`);
- `passes`: evaluation passes and their first scores (`Pass`, `passes`);
- `stream`: the validation tokens, their tokenizer, true bytes per target, BOS;
- `reported`: printed numbers matched to a pass and an aggregation;
- `updates`: updates that used positions before their final score, grouped, with evidence;
- `coverage`: which targets a pass scored, and what the missing ones are;
- `locations`: frames turned into finding locations and evidence text; the worst probe record per function.
"""
