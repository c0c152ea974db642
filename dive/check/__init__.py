"""Checks of the whole DiVE path at a real model's shape (`dive check`): they build what they need
offline, run every stage through the functions the commands call, and report the cost of each."""
