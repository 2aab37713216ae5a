"""ddmd_lab: a research harness for Decoupled DMD."""
