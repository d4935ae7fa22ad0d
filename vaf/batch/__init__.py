"""Batch systems behind one protocol (:mod:`vaf.batch.base`): Slurm and TORQUE adapters.

Used by the join gate (add a node) and the elastic daemon (jobs, nodes, drain, remove).
Each adapter builds argv lists from validated fields and parses the system's machine-readable
output; each has a fake in the lab that replays real captured outputs.
"""
