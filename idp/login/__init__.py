"""The hosted login engine: transaction state, planner, steps (one file each) and the views that run them.

Pipeline (STYLE.md): a policy names reasons -> a login transaction stores them with where to return ->
the planner turns reasons and the user into steps -> each step renders one screen and verifies one answer ->
the login session records auth_time, amr and acr -> the browser returns where it came from.
"""
