"""The sign-in engine: typed transaction state, the plan, the steps and factors, and the views that run them.

A policy names reasons -> a login transaction stores them with where to return -> the plan
(``idp.login.planner.PLAN``) picks the next step -> each step renders one screen and verifies one answer -> the
login session records auth_time, amr and acr -> the browser returns where it came from. Factors are one module
each in ``idp.login.factors``, listed once in its registry.
"""
