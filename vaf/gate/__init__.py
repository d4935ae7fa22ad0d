"""Server side of worker contextualization: the ssh forced-command gate.

``grammar`` (stdlib only) is shared with the guest, which builds its request with it;
``identity`` binds a host name to the connecting address; vaf.batch adapters speak qmgr or
scontrol; ``gate`` ties them together; ``keys`` prints the ``authorized_keys`` line.
"""
