"""`dive bench`: the paper's tables in miniature on SynthVI (run.py drives the stages in stages.py and
the ReID jobs in jobs.py; rows.py adds rows beside a finished bench)."""
