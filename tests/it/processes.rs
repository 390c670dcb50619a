//! The process around an operation: signals, closed pipes, the dump
//! command's environment, leases of dead processes, and exit codes.
