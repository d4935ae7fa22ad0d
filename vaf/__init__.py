"""vaf: Virtual Analysis Facility drivers for OpenNebula."""

#: the one place of the version: setup.cfg reads it (``attr:``), ``vaf --version`` prints it,
#: so every install path (pip, install.sh's copy) reports the same
__version__ = "0.1.0"
