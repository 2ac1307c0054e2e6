//! Faults are the module's own: batch deadlines measured in the guest's CPU time, and auto-revert only on faults the module made.
