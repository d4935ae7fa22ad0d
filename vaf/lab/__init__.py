"""The lab: vaf's stand-ins and test hosts, shared by the tests, the demo and the benchmarks.

* :mod:`vaf.lab.testbed` — the test hypervisor (a Debian guest under qemu, reached by ssh on
  127.0.0.1), with device-mapper, LVM, bridges and ebtables that this machine's kernel lacks;
* :mod:`vaf.lab.oned` — oned's driver runtime (how ``one_tm.rb``, the VMM, VNM and hooks run an
  action and turn its exit code and stderr into a reply);
* :mod:`vaf.lab.lvmsnap_env` — lvmsnap's remotes synced into the test hypervisor, images on its
  shared mount;
* :mod:`vaf.lab.torque_qmgr`, :mod:`vaf.lab.torque` — a TORQUE server stand-in (``qmgr``,
  ``pbsnodes``, ``qstat``, the accounting log) with a real server's texts, formats and exit
  codes, and :class:`~vaf.lab.torque.TorqueLab` to drive it;
* :mod:`vaf.lab.slurm`, :mod:`vaf.lab.sshd` — real Slurm and sshd daemons on 127.0.0.1,
  started without systemd; :mod:`vaf.lab.netns` — hosts in network namespaces on a bridge.

The lab is product code (the README's first command runs it) but it is never shipped to
hypervisors: ``install.sh`` leaves ``vaf/lab`` out of the remotes tree, and nothing outside
``vaf/lab``, ``tests/``, ``bench/`` and ``scripts/`` imports it.
"""
