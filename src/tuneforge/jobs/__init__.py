"""Fine-tuning jobs: the SQLite store (files, jobs, events), the scheduler and the worker process.

Every job runs `tuneforge.train.recipe` in its own process, on a run directory under
`$TUNEFORGE_HOME/jobs/<job id>/run`; the database records what the API shows about it.
"""
