"""Base64 XML payloads as oned sends them, parsed into read-only views."""

import base64

import pytest

from vaf.errors import ProtocolError
from vaf.one.xml import VM, DsDriverAction, decode_payload, encode_payload

VM_XML = """<VM>
  <ID>42</ID><UID>5</UID><GID>100</GID><NAME>proof-worker-3</NAME>
  <STATE>3</STATE><LCM_STATE>3</LCM_STATE><DEPLOY_ID>one-42</DEPLOY_ID>
  <TEMPLATE>
    <CPU>1</CPU>
    <CONTEXT><NETWORK>YES</NETWORK><SET_HOSTNAME>proof-worker-3</SET_HOSTNAME></CONTEXT>
    <DISK><DISK_ID>0</DISK_ID><IMAGE_ID>3</IMAGE_ID><SOURCE>/var/lib/one/datastores/1/8f3a</SOURCE>
      <CLONE>YES</CLONE><PERSISTENT>NO</PERSISTENT><SIZE>2048</SIZE><TARGET>vda</TARGET></DISK>
    <DISK><DISK_ID>1</DISK_ID><TYPE>swap</TYPE><SIZE>1024</SIZE></DISK>
    <DISK><DISK_ID>2</DISK_ID><TYPE>fs</TYPE><SIZE>20480</SIZE><FORMAT>raw</FORMAT><FS>xfs</FS></DISK>
    <NIC><NIC_ID>0</NIC_ID><MAC>02:00:0a:01:02:03</MAC><TARGET>one-42-0</TARGET>
      <BRIDGE>br0</BRIDGE><NETWORK_ID>4</NETWORK_ID><NETWORK>proof</NETWORK>
      <VN_MAD>vaf_isolation</VN_MAD><IP>10.1.2.3</IP>
      <EXTRA_AUTHORIZED_MACS>02:00:0a:09:09:09</EXTRA_AUTHORIZED_MACS></NIC>
  </TEMPLATE>
  <USER_TEMPLATE><CPU_PRIORITY>interactive</CPU_PRIORITY></USER_TEMPLATE>
  <HISTORY_RECORDS>
    <HISTORY><HOSTNAME>node1</HOSTNAME><HID>1</HID><DS_ID>100</DS_ID><VM_MAD>kvm</VM_MAD></HISTORY>
    <HISTORY><HOSTNAME>node2</HOSTNAME><HID>2</HID><DS_ID>101</DS_ID><VM_MAD>kvm</VM_MAD></HISTORY>
  </HISTORY_RECORDS>
</VM>"""


def test_vm_view():
    vm = VM.from_payload(encode_payload(VM_XML))
    assert (vm.vm_id, vm.name, vm.deploy_id, vm.uid, vm.gid) == (
        42, "proof-worker-3", "one-42", 5, 100)
    assert [d.disk_id for d in vm.disks] == [0, 1, 2]
    assert vm.disk(0).clone and not vm.disk(0).persistent and vm.disk(0).size_mb == 2048
    assert (vm.disk(1).type, vm.disk(2).fs, vm.disk(2).format) == ("swap", "xfs", "raw")
    nic = vm.nics[0]
    assert (nic.nic_id, nic.mac, nic.target, nic.network_id, nic.vn_mad) == (
        0, "02:00:0a:01:02:03", "one-42-0", 4, "vaf_isolation")
    assert nic.attrs["EXTRA_AUTHORIZED_MACS"] == "02:00:0a:09:09:09"
    assert vm.context["SET_HOSTNAME"] == "proof-worker-3"
    assert vm.attribute("CPU_PRIORITY") == "interactive"
    assert vm.attribute("CPU") == "1"
    assert vm.history.hostname == "node2" and vm.history.ds_id == 101
    with pytest.raises(ProtocolError, match="VM 42 has no DISK with DISK_ID 9"):
        vm.disk(9)


def test_views_are_read_only():
    vm = VM.from_payload(encode_payload(VM_XML))
    with pytest.raises(AttributeError):
        vm.vm_id = 1
    with pytest.raises(TypeError):
        vm.nics[0].attrs["MAC"] = "x"


def test_payload_with_line_breaks_is_accepted():
    # base64 -w76 output, as some tools produce, must still decode
    wrapped = base64.encodebytes(VM_XML.encode())
    assert VM.from_payload(wrapped).vm_id == 42


def test_vm_inside_a_wrapper_document():
    wrapped = f"<VMM_DRIVER_ACTION_DATA><HOST>node1</HOST>{VM_XML}</VMM_DRIVER_ACTION_DATA>"
    assert VM.from_payload(encode_payload(wrapped)).vm_id == 42


@pytest.mark.parametrize("payload, message", [
    ("", "is empty"),
    ("   \n", "is empty"),
    ("%%%not-base64%%%", "not valid base64"),
    ("QUJD=X", "not valid base64"),
    (encode_payload("<VM><ID>1</ID>"), "not well-formed XML"),
    (encode_payload("plain text"), "not well-formed XML"),
    (encode_payload("<IMAGE><ID>1</ID></IMAGE>"), "expected a <VM> document, got <IMAGE>"),
    (encode_payload("<VM><NAME>x</NAME></VM>"), "VM XML has no ID"),
    (encode_payload("<VM><ID>x1</ID></VM>"), "ID must be an integer"),
    (encode_payload("<VM><ID>1</ID><TEMPLATE><NIC><MAC>x</MAC></NIC></TEMPLATE></VM>"),
     "VM 1 XML NIC has no NIC_ID"),
    (encode_payload("<VM><ID>1</ID><TEMPLATE><DISK><DISK_ID>0</DISK_ID><SIZE>big</SIZE>"
                    "</DISK></TEMPLATE></VM>"), "SIZE must be an integer"),
])
def test_bad_vm_payloads(payload, message):
    with pytest.raises(ProtocolError, match=message):
        VM.from_payload(payload)


def test_entities_are_not_expanded(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET")
    doc = (f'<!DOCTYPE VM [<!ENTITY x SYSTEM "file://{secret}">]>'
           "<VM><ID>1</ID><NAME>&x;</NAME></VM>")
    # lxml parses without resolving the entity; the stdlib parser (hosts without lxml)
    # refuses any DTD: either way the file never reaches the driver
    try:
        vm = VM.from_payload(encode_payload(doc))
    except ProtocolError as err:
        assert "DTD" in err.reason and "TOP-SECRET" not in err.reason
    else:
        assert "TOP-SECRET" not in (vm.name or "")


DS_PAYLOAD = ("<DS_DRIVER_ACTION_DATA><DATASTORE><ID>100</ID><NAME>system</NAME><TYPE>1</TYPE>"
              "<DS_MAD>-</DS_MAD><TM_MAD>lvmsnap</TM_MAD><TEMPLATE><BRIDGE_LIST>node1 node2"
              "</BRIDGE_LIST></TEMPLATE></DATASTORE><DATASTORE_LOCATION>/var/lib/one/datastores"
              "</DATASTORE_LOCATION><MONITOR_VM_DISKS>1</MONITOR_VM_DISKS></DS_DRIVER_ACTION_DATA>")


def test_ds_driver_action():
    action = DsDriverAction.from_payload(encode_payload(DS_PAYLOAD))
    assert action.datastore.ds_id == 100 and action.datastore.tm_mad == "lvmsnap"
    assert action.datastore.template["BRIDGE_LIST"] == "node1 node2"
    assert action.datastore_location == "/var/lib/one/datastores" and action.monitor_vm_disks


@pytest.mark.parametrize("xml, message", [
    ("<DATASTORE><ID>1</ID></DATASTORE>", "expected <DS_DRIVER_ACTION_DATA>"),
    ("<DS_DRIVER_ACTION_DATA/>", "no DATASTORE element"),
    ("<DS_DRIVER_ACTION_DATA><DATASTORE><NAME>x</NAME></DATASTORE></DS_DRIVER_ACTION_DATA>",
     "DATASTORE XML has no ID"),
])
def test_bad_ds_payloads(xml, message):
    with pytest.raises(ProtocolError, match=message):
        DsDriverAction.from_payload(encode_payload(xml))


def test_decode_round_trip():
    assert decode_payload(encode_payload("<A><B>1</B></A>")).findtext("B") == "1"
