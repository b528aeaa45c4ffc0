"""Records: AEMO's record shapes, enumerations, validation, pre-flight, outcomes."""
