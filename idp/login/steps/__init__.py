"""The sign-in steps that are not factors: identification (password or passkey), email verification, in-flow
enrolment of a second factor, and consent. The factors are in ``idp.login.factors``; the order in which all of
them run is declared in ``idp.login.planner``."""
