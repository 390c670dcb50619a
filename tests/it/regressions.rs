//! Regressions for review findings: each test names the failure it guards.
