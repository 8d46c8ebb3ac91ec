"""annotation: ranking tasks into Argilla, finished rankings out as rankings and preferences.

Pusher: `rlhf.ranking-tasks` -> one Argilla record per task (record id = task id).
Collector: completed records -> `rlhf.rankings` (per-annotator ranks, ties kept) and
`rlhf.preferences` (aggregated pairwise chosen/rejected with margin and agreement).
"""
