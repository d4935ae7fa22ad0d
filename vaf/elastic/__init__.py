"""The elastic facility: worker VMs appear when jobs wait and go away when idle.

``engine`` decides (a pure function), ``store`` remembers (sqlite), ``daemon`` observes and acts
(OpenNebula through :mod:`vaf.one.api`, the batch system through :mod:`vaf.batch`), ``cli`` is
``vaf elastic`` (the daemon, status, and Slurm's power-saving entry points).
"""
