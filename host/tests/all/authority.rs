//! One authority over the running release: the operator, the tag watch and auto-revert, and the rule between them.
