"""``/etc/vaf/elastic.conf``: every setting with its default and its key, in one place.

The file is ``KEY=value`` lines (:mod:`vaf.config`). Times are seconds. The shipped example,
``share/elastic/elastic.conf``, lists the same keys with these defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from vaf.batch.slurm import expand_hostlist
from vaf.config import DriverConfig, load_config
from vaf.errors import ConfigError

DEFAULT_PATH = "/etc/vaf/elastic.conf"
MODES = ("power-save", "queue")


@dataclass(frozen=True)
class Settings:
    #: BATCH: ``slurm`` or ``torque``
    batch: str = "slurm"
    #: MODE: ``power-save`` (Slurm calls ``vaf elastic resume/suspend``) or ``queue`` (the daemon
    #: reads the queue and decides itself: TORQUE, or Slurm without power saving)
    mode: str = "power-save"
    #: NODES: the names workers may take (Slurm: the ``State=CLOUD`` range of slurm.conf)
    nodes: tuple[str, ...] = ()
    #: STATIC_NODES: never touched (physical nodes); nodes outside NODES are never touched anyway
    static_nodes: tuple[str, ...] = ()
    #: TEMPLATE_ID: the OpenNebula VM template of a worker
    template_id: int = 0
    #: CORES_PER_VM: cores one worker brings (the template's VCPU)
    cores_per_vm: int = 1
    #: MIN_VMS / MAX_VMS: quota for this template
    min_vms: int = 0
    max_vms: int = 10
    #: MAX_REQUESTS_PER_CYCLE: rate limit of new VMs per decision
    max_requests_per_cycle: int = 40
    #: WAIT_THRESHOLD: a job waits this long before it asks for workers (queue mode)
    wait_threshold: float = 10.0
    #: IDLE_THRESHOLD: an idle worker is drained after this long (0: leave it to Slurm's
    #: SuspendTime in power-save mode)
    idle_threshold: float = 600.0
    #: STALE_THRESHOLD: a down/offline worker node is removed after this long
    stale_threshold: float = 300.0
    #: DEPLOY_TIMEOUT: a VM whose node has not joined after this long is terminated
    deploy_timeout: float = 600.0
    #: MAX_JOIN_FAILURES: after this many failed joins in a row, stop asking for VMs ...
    max_join_failures: int = 3
    #: FAILURE_BACKOFF: ... and try one VM again after this long
    failure_backoff: float = 900.0
    #: POLL_INTERVAL: how often to look while something is booting, draining or stopping
    poll_interval: float = 1.0
    #: RECONCILE_INTERVAL: the safety-net look at everything when nothing happens
    reconcile_interval: float = 60.0
    #: TERMINATE_RETRY: ask OpenNebula again to terminate a VM still listed after this long
    terminate_retry: float = 60.0
    #: SQUEEZE: ``vaf cpu squeeze`` selection words (e.g. ``--attr VAF_BATCH=1``); empty: off
    squeeze: tuple[str, ...] = ()
    #: VAF: the vaf command (for ``vaf cpu``)
    vaf: tuple[str, ...] = ("vaf",)
    #: ONE_XMLRPC: OpenNebula's endpoint
    one_xmlrpc: str = "http://localhost:2633/RPC2"
    #: ONE_AUTH: file holding ``user:password`` (default: $ONE_AUTH, then ~/.one/one_auth)
    one_auth: str = ""
    #: ONE_TIMEOUT: seconds for one API call
    one_timeout: float = 10.0
    #: OWNER: tag written into each VM (``VAF_ELASTIC``) to know our own VMs
    owner: str = "vaf-elastic"
    #: JOIN_CONTEXT: extra CONTEXT attributes for the worker (``KEY=value`` words)
    join_context: tuple[str, ...] = ()
    #: STATE_DIR: the state store and the daemon's socket
    state_dir: str = "/var/lib/vaf/elastic"
    #: SLURM_CONF: passed to Slurm's commands through the environment when set
    slurm_conf: str = ""
    #: QMGR / PBSNODES / QSTAT: TORQUE's client commands (prefixes, e.g. ``sudo -n qmgr``)
    qmgr: tuple[str, ...] = ("qmgr",)
    pbsnodes: tuple[str, ...] = ("pbsnodes",)
    qstat: tuple[str, ...] = ("qstat",)
    #: PBS_HOME: the TORQUE server's home; its ``server_priv/accounting`` log wakes the daemon
    #: (empty: no log, the daemon looks every RECONCILE_INTERVAL)
    pbs_home: str = "/var/spool/torque"
    #: ACCOUNTING_POLL: how often the accounting log is looked at (one ``stat``)
    accounting_poll: float = 0.2
    #: DRY_RUN: log the actions instead of doing them
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"MODE must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.batch not in ("slurm", "torque"):
            raise ConfigError(f"BATCH must be slurm or torque, got {self.batch!r}")
        if self.batch == "torque" and self.mode != "queue":
            raise ConfigError("BATCH=torque needs MODE=queue (TORQUE has no power saving)")
        if not 0 <= self.min_vms <= self.max_vms:
            raise ConfigError(f"need 0 <= MIN_VMS <= MAX_VMS, got {self.min_vms}, {self.max_vms}")
        if len(self.nodes) < self.max_vms:
            raise ConfigError(f"NODES names {len(self.nodes)} workers, fewer than MAX_VMS "
                              f"{self.max_vms}")
        if self.cores_per_vm < 1:
            raise ConfigError("CORES_PER_VM must be at least 1")

    @property
    def database(self) -> str:
        return os.path.join(self.state_dir, "state.db")

    @property
    def socket(self) -> str:
        return os.path.join(self.state_dir, "wake.sock")


def _key(field_name: str) -> str:
    return field_name.upper()


def settings_from(config: DriverConfig, **overrides) -> Settings:
    """Settings from a parsed file; ``overrides`` (command-line options) win."""
    values = {}
    for spec in fields(Settings):
        key, default = _key(spec.name), spec.default
        if isinstance(default, bool):
            value = config.bool(key, default)
        elif isinstance(default, int):
            value = config.int(key, default)
        elif isinstance(default, float):
            value = config.float(key, default, minimum=0.0)
        elif spec.name == "nodes" or spec.name == "static_nodes":
            value = tuple(name for item in config.list(key) for name in expand_hostlist(item))
        elif spec.name in ("vaf", "squeeze", "join_context", "qmgr", "pbsnodes", "qstat"):
            value = config.argv(key, default)
        else:
            value = config.str(key, default)
        values[spec.name] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)


def load_settings(path: str | None = None, **overrides) -> Settings:
    return settings_from(load_config(path or os.environ.get("VAF_ELASTIC_CONF", DEFAULT_PATH),
                                     environ={}), **overrides)
