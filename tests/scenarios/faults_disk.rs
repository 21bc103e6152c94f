//! Fault scenarios (issue: fault scenarios with real processes) — see the module docs once
//! written; each test ends with `urbd_tests::report::scenario`.
