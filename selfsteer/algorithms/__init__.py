"""Pure, Ray-free loss and selection functions (the formulas: docs/concepts/)."""
