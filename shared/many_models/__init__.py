"""Many models on a schedule: one anomaly model per (device, sensor), scored window by window in shards.

The pure core of ``score-models``; it knows nothing of processes, Functions or Azure ML. A run is
window -> run id -> shards (:mod:`.shards`) -> :func:`.scoring.score_shard` per shard -> results
recorded (:mod:`.run_state`) -> merged predictions and report (:mod:`.report`).
"""
