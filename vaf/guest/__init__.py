"""Guest side of worker contextualization (stdlib only: the worker image has only python3).

``context`` reads OpenNebula's ``context.sh`` as data; ``worker`` runs the boot steps
(hostname, swap, scratch, batch client, join over ssh, start, OneGate READY).
"""
