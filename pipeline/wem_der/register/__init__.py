"""Reading the register in bulk, and comparing a record with what it holds."""
