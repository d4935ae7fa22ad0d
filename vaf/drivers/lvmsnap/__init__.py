"""lvmsnap, the caching LVM transfer manager (TM_MAD=lvmsnap), in one package.

* :mod:`.actions`: the front-end half, one function per TM action oned calls;
* :mod:`.requests`: the typed request each front-end action sends to the host half;
* :mod:`.host`: the host half (``host-command lvmsnap-<action>``), the work on LVM;
* :mod:`.cache`: the cache's names, keys, tags and eviction order (pure);
* :mod:`.settings`: every conf key with its type, default and meaning;
* :mod:`.monitor`: the datastore monitor.

Importing this package imports nothing: the host half loads only what it uses.
"""
