"""Pure, Ray-free loss and selection functions (see ../shared/spec/)."""
