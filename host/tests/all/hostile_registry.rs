//! The hostile-input suite, registries: logins that must stay with their registry, answers that fail their checks, and what fail-static may mask.
