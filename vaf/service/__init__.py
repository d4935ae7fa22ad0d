"""What every long-running vaf process shares: logging to journald/syslog and systemd readiness.

oned's drivers log in oned's stderr format (:mod:`vaf.one.log`); daemons (the elastic daemon,
the login service) log through :func:`setup_logging` instead, and tell systemd they are ready
with :func:`notify` (``Type=notify`` units).
"""
