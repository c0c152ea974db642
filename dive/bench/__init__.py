"""`dive bench`: the paper's tables in miniature on SynthVI (see run.py for the stages)."""
