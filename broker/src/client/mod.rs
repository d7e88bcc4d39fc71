//! The `ctx` command line: one module per verb.
