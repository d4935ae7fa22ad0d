"""Read-only views of the XML documents oned hands to drivers.

Payloads arrive base64-encoded: on stdin for network drivers, migrate actions and the
datastore monitor, as the ``$TEMPLATE`` argument for hooks. :func:`decode_payload` checks the
encoding and parses with a parser that resolves no entities and fetches nothing.
The views expose what the drivers use and keep every other attribute reachable through
``attrs`` so a driver can read site-specific keys without touching lxml.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from xml.etree import ElementTree
from xml.parsers import expat

from vaf.errors import ProtocolError

try:
    from lxml import etree
except ImportError:  # a hypervisor: Debian's python3 alone runs the host-side drivers
    etree = None

_PARSER = (etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False,
                           remove_blank_text=True) if etree is not None else None)
_MAX_PAYLOAD = 16 * 1024 * 1024
_INT_RE = re.compile(r"^[0-9]{1,18}$")  # ASCII only: str.isdigit() accepts '٣'


def decode_payload(data: str | bytes, what: str = "payload") -> etree._Element:
    """Decode one base64 XML payload (whitespace and newlines tolerated) and parse it."""
    if isinstance(data, str):
        data = data.encode("ascii", errors="replace")
    compact = b"".join(data.split())
    if not compact:
        raise ProtocolError(f"{what} is empty (expected base64-encoded XML)")
    if len(compact) > _MAX_PAYLOAD:
        raise ProtocolError(f"{what} is larger than {_MAX_PAYLOAD} bytes")
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ProtocolError(f"{what} is not valid base64: {err}") from None
    return parse_xml(raw, what)


def parse_xml(raw: str | bytes, what: str = "XML document") -> etree._Element:
    if isinstance(raw, str):
        raw = raw.encode()
    if etree is None:
        return parse_xml_stdlib(raw, what)
    try:
        return etree.fromstring(raw, _PARSER)
    except etree.XMLSyntaxError as err:
        raise ProtocolError(f"{what} is not well-formed XML: {err}") from None


def parse_xml_stdlib(raw: bytes, what: str = "XML document") -> ElementTree.Element:
    """Parse with the stdlib's expat where lxml is missing, refusing any DTD.

    oned never writes a DOCTYPE; refusing one (and any entity declaration) closes the
    entity-expansion and external-entity doors that plain ElementTree leaves open. The
    elements answer ``find``/``iterfind``/``text``/``tag`` like lxml's, which is all the views
    below use.
    """
    builder = ElementTree.TreeBuilder()
    parser = expat.ParserCreate()

    def refuse(*_args) -> None:
        raise ProtocolError(f"{what} contains a DTD or an entity declaration (refused)")

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    parser.ordered_attributes = False
    try:
        parser.Parse(raw, True)
        return builder.close()
    except (expat.ExpatError, AssertionError) as err:
        raise ProtocolError(f"{what} is not well-formed XML: {err}") from None


def encode_payload(xml: str | bytes) -> str:
    """The inverse of :func:`decode_payload` (used by tools and tests)."""
    if isinstance(xml, str):
        xml = xml.encode()
    return base64.b64encode(xml).decode("ascii")


def _text(node: etree._Element, path: str) -> str | None:
    found = node.find(path)
    if found is None or found.text is None:
        return None
    return found.text.strip()


def _required(node: etree._Element, path: str, where: str) -> str:
    value = _text(node, path)
    if not value:
        raise ProtocolError(f"{where} has no {path}")
    return value


def _required_int(node: etree._Element, path: str, where: str) -> int:
    value = _required(node, path, where)
    if not _INT_RE.match(value):
        raise ProtocolError(f"{where}: {path} must be an integer, got {value!r}")
    return int(value)


def _optional_int(node: etree._Element, path: str, where: str) -> int | None:
    value = _text(node, path)
    if value in (None, ""):
        return None
    if not _INT_RE.match(value):
        raise ProtocolError(f"{where}: {path} must be an integer, got {value!r}")
    return int(value)


def _flat(node: etree._Element | None) -> Mapping[str, str]:
    """The simple child elements of ``node`` as an immutable name → text mapping."""
    if node is None:
        return MappingProxyType({})
    return MappingProxyType({child.tag: (child.text or "").strip()
                             for child in node if isinstance(child.tag, str) and len(child) == 0})


@dataclass(frozen=True)
class Nic:
    nic_id: int
    mac: str | None
    target: str | None
    bridge: str | None
    network_id: int | None
    network: str | None
    vn_mad: str | None
    ip: str | None
    attrs: Mapping[str, str] = field(repr=False)

    @classmethod
    def from_element(cls, node: etree._Element, where: str) -> Nic:
        where = f"{where} NIC"
        return cls(nic_id=_required_int(node, "NIC_ID", where), mac=_text(node, "MAC"),
                   target=_text(node, "TARGET"), bridge=_text(node, "BRIDGE"),
                   network_id=_optional_int(node, "NETWORK_ID", where),
                   network=_text(node, "NETWORK"), vn_mad=_text(node, "VN_MAD"),
                   ip=_text(node, "IP"), attrs=_flat(node))


@dataclass(frozen=True)
class Disk:
    disk_id: int
    source: str | None
    type: str | None
    size_mb: int | None
    format: str | None
    fs: str | None
    image_id: int | None
    clone: bool
    persistent: bool
    target: str | None
    attrs: Mapping[str, str] = field(repr=False)

    @classmethod
    def from_element(cls, node: etree._Element, where: str) -> Disk:
        where = f"{where} DISK"
        return cls(disk_id=_required_int(node, "DISK_ID", where), source=_text(node, "SOURCE"),
                   type=_text(node, "TYPE"), size_mb=_optional_int(node, "SIZE", where),
                   format=_text(node, "FORMAT"), fs=_text(node, "FS"),
                   image_id=_optional_int(node, "IMAGE_ID", where),
                   clone=(_text(node, "CLONE") or "").upper() == "YES",
                   persistent=(_text(node, "PERSISTENT") or "").upper() == "YES",
                   target=_text(node, "TARGET"), attrs=_flat(node))


@dataclass(frozen=True)
class History:
    hostname: str | None
    host_id: int | None
    ds_id: int | None
    vm_mad: str | None


@dataclass(frozen=True)
class VM:
    vm_id: int
    name: str | None
    deploy_id: str | None
    uid: int | None
    gid: int | None
    state: int | None
    lcm_state: int | None
    nics: tuple[Nic, ...]
    disks: tuple[Disk, ...]
    context: Mapping[str, str] = field(repr=False)
    user_template: Mapping[str, str] = field(repr=False)
    template: Mapping[str, str] = field(repr=False)
    history: History | None = None

    @classmethod
    def from_element(cls, root: etree._Element) -> VM:
        if root.tag != "VM":
            vm = root.find(".//VM")
            if vm is None:
                raise ProtocolError(f"expected a <VM> document, got <{root.tag}>")
            root = vm
        where = "VM XML"
        vm_id = _required_int(root, "ID", where)
        where = f"VM {vm_id} XML"
        return cls(vm_id=vm_id, name=_text(root, "NAME"), deploy_id=_text(root, "DEPLOY_ID"),
                   uid=_optional_int(root, "UID", where), gid=_optional_int(root, "GID", where),
                   state=_optional_int(root, "STATE", where),
                   lcm_state=_optional_int(root, "LCM_STATE", where),
                   nics=tuple(Nic.from_element(n, where) for n in root.iterfind("TEMPLATE/NIC")),
                   disks=tuple(Disk.from_element(d, where)
                               for d in root.iterfind("TEMPLATE/DISK")),
                   context=_flat(root.find("TEMPLATE/CONTEXT")),
                   user_template=_flat(root.find("USER_TEMPLATE")),
                   template=_flat(root.find("TEMPLATE")),
                   history=_last_history(root, where))

    @classmethod
    def from_payload(cls, data: str | bytes, what: str = "VM payload") -> VM:
        return cls.from_element(decode_payload(data, what))

    def disk(self, disk_id: int) -> Disk:
        for disk in self.disks:
            if disk.disk_id == disk_id:
                return disk
        raise ProtocolError(f"VM {self.vm_id} has no DISK with DISK_ID {disk_id}")

    def attribute(self, name: str) -> str | None:
        """A VM-wide attribute: USER_TEMPLATE first (what `onevm update` sets), then TEMPLATE."""
        return self.user_template.get(name) or self.template.get(name)


def _last_history(root: etree._Element, where: str) -> History | None:
    records = root.findall("HISTORY_RECORDS/HISTORY")
    if not records:
        return None
    last = records[-1]
    return History(hostname=_text(last, "HOSTNAME"),
                   host_id=_optional_int(last, "HID", where),
                   ds_id=_optional_int(last, "DS_ID", where), vm_mad=_text(last, "VM_MAD"))


@dataclass(frozen=True)
class Datastore:
    ds_id: int
    name: str | None
    type: int | None
    tm_mad: str | None
    ds_mad: str | None
    base_path: str | None
    template: Mapping[str, str] = field(repr=False)

    @classmethod
    def from_element(cls, node: etree._Element) -> Datastore:
        where = "DATASTORE XML"
        return cls(ds_id=_required_int(node, "ID", where), name=_text(node, "NAME"),
                   type=_optional_int(node, "TYPE", where), tm_mad=_text(node, "TM_MAD"),
                   ds_mad=_text(node, "DS_MAD"), base_path=_text(node, "BASE_PATH"),
                   template=_flat(node.find("TEMPLATE")))


@dataclass(frozen=True)
class DsDriverAction:
    """``DS_DRIVER_ACTION_DATA``: what the datastore MAD passes to ``monitor``."""

    datastore: Datastore
    datastore_location: str | None
    monitor_vm_disks: bool

    @classmethod
    def from_payload(cls, data: str | bytes) -> DsDriverAction:
        root = decode_payload(data, "datastore payload")
        if root.tag != "DS_DRIVER_ACTION_DATA":
            raise ProtocolError(f"expected <DS_DRIVER_ACTION_DATA>, got <{root.tag}>")
        node = root.find("DATASTORE")
        if node is None:
            raise ProtocolError("datastore payload has no DATASTORE element")
        return cls(datastore=Datastore.from_element(node),
                   datastore_location=_text(root, "DATASTORE_LOCATION"),
                   monitor_vm_disks=_text(root, "MONITOR_VM_DISKS") == "1")
