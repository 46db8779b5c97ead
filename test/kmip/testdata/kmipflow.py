#!/usr/bin/python3
"""kmipflow.py: drive a KMIP server the way real storage engines do.

Requests are encoded and responses decoded by PyKMIP (Debian's
python3-pykmip, importable only under /usr/bin/python3), so the server is
checked against a KMIP implementation nobody on this project wrote. Each flow
reproduces one client's sequence of operations, protocol version, request
header and connection handling:

  mongod      mongod Enterprise: protocol 1.2 (1.0 with --version 1.0);
              header = Protocol Version + Batch Count; Create(AES-256,
              usage mask 12, no Name), Get, Activate, Get Attributes(State)
              on one connection; then the State poll on a fresh one.
  percona     Percona Server for MongoDB (libkmip): protocol 1.0; header =
              Protocol Version, Maximum Response Size, Time Stamp, Batch
              Count; Register(Symmetric Key raw AES-256, same template),
              Activate; a new session reads State, then Get only if Active;
              sessions end with close_notify.
  secretdata  libmongocrypt: protocol 1.0, one operation per connection,
              abrupt close; Register(Secret Data, Seed, Raw, 96 bytes, empty
              Template-Attribute; --newer: usage mask 0 and key format
              Opaque), Activate, Get.
  locate      Create with a Name, Locate by Name, by Object Type + State.
  lifecycle   Destroy refused while Active, Revoke, Destroy, State Destroyed.
  wire        raw response trees for the shape checks (see wire()).
  get/state/activate/revoke/destroy/create
              one operation on its own connection (ownership, revocation).

Every flow prints one JSON object on stdout. Exit status 0 means the flow
ran (the caller judges the results); 2 means it could not talk KMIP at all.
"""

import argparse
import json
import os
import socket
import ssl
import struct
import sys

try:
    from kmip.core import enums
    from kmip.core import objects
    from kmip.core import attributes as attr
    from kmip.core.factories import attributes as attr_factory
    from kmip.core.factories import secrets as secret_factory
    from kmip.core.messages import contents, messages, payloads
    from kmip.core.utils import BytearrayStream
except ImportError as e:  # the Go test turns this into "run make deps"
    print(json.dumps({"error": "pykmip-missing", "detail": str(e)}))
    sys.exit(3)

VERSIONS = {
    "1.0": enums.KMIPVersion.KMIP_1_0,
    "1.1": enums.KMIPVersion.KMIP_1_1,
    "1.2": enums.KMIPVersion.KMIP_1_2,
    "1.3": enums.KMIPVersion.KMIP_1_3,
    "1.4": enums.KMIPVersion.KMIP_1_4,
}

AF = attr_factory.AttributeFactory()
SF = secret_factory.SecretFactory()


class Conn:
    """One TLS connection carrying KMIP request/response pairs."""

    def __init__(self, args, pem=None, version="1.2"):
        self.version = version
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(args.ca)
        ctx.load_cert_chain(pem or args.pem)
        host, port = args.addr.rsplit(":", 1)
        raw = socket.create_connection((host, int(port)), timeout=args.timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)

    def _read_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("connection closed after %d of %d bytes" % (len(buf), n))
            buf += chunk
        return buf

    def call(self, operation, payload, percona_header=False, batch_id=None):
        """Send one batch item; return (decoded batch item, raw response bytes)."""
        kv = VERSIONS[self.version]
        major, minor = (int(x) for x in self.version.split("."))
        header = {
            "protocol_version": contents.ProtocolVersion(major, minor),
            "batch_count": contents.BatchCount(1),
        }
        if percona_header:
            header["maximum_response_size"] = contents.MaximumResponseSize(1 << 20)
            header["time_stamp"] = contents.TimeStamp(int(__import__("time").time()))
        item = messages.RequestBatchItem(
            operation=contents.Operation(operation),
            unique_batch_item_id=batch_id,
            request_payload=payload,
        )
        msg = messages.RequestMessage(
            request_header=messages.RequestHeader(**header), batch_items=[item]
        )
        out = BytearrayStream()
        msg.write(out, kv)
        self.sock.sendall(bytes(out.buffer))
        head = self._read_exact(8)
        (length,) = struct.unpack(">I", head[4:8])
        raw = head + self._read_exact(length)
        resp = messages.ResponseMessage()
        resp.read(BytearrayStream(raw), kv)
        if len(resp.batch_items) != 1:
            raise ValueError("%d batch items in the response, want 1" % len(resp.batch_items))
        return resp.batch_items[0], raw

    def close(self, notify=True):
        """notify=True ends with TLS close_notify (libkmip); False is libmongocrypt's abrupt close."""
        try:
            if notify:
                self.sock.unwrap()
        except (OSError, ssl.SSLError):
            pass
        self.sock.close()


def enum_name(v, cls=None):
    """The enumeration's name (SUCCESS, ACTIVE, ...), whatever PyKMIP wrapped it in."""
    if v is None:
        return None
    v = getattr(v, "value", v)
    if cls is not None and isinstance(v, int) and not hasattr(v, "name"):
        try:
            v = cls(v)
        except ValueError:
            return str(v)
    return getattr(v, "name", str(v))


def usage_mask(mask):
    """PyKMIP takes the mask as a list of flags."""
    return [f for f in enums.CryptographicUsageMask if f.value & mask]


def outcome(item):
    """The part of a response batch item every flow reports."""
    return {
        "operation": enum_name(item.operation),
        "status": enum_name(item.result_status),
        "reason": enum_name(item.result_reason),
        "message": item.result_message.value if item.result_message else None,
    }


def uid_of(item):
    u = item.response_payload.unique_identifier
    return getattr(u, "value", u)


def template(mask=12, name=None, length=256):
    attrs = [
        AF.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_ALGORITHM, enums.CryptographicAlgorithm.AES),
        AF.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_LENGTH, length),
        AF.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_USAGE_MASK, usage_mask(mask)),
    ]
    if name:
        attrs.append(AF.create_attribute(enums.AttributeType.NAME, name))
    return objects.TemplateAttribute(attributes=attrs)


def create(c, name=None, **kw):
    return c.call(enums.Operation.CREATE, payloads.CreateRequestPayload(
        object_type=enums.ObjectType.SYMMETRIC_KEY, template_attribute=template(name=name)), **kw)


def get(c, uid, **kw):
    return c.call(enums.Operation.GET, payloads.GetRequestPayload(unique_identifier=uid), **kw)


def activate(c, uid, **kw):
    return c.call(enums.Operation.ACTIVATE, payloads.ActivateRequestPayload(unique_identifier=attr.UniqueIdentifier(uid)), **kw)


def get_state(c, uid, **kw):
    return c.call(enums.Operation.GET_ATTRIBUTES, payloads.GetAttributesRequestPayload(uid, ["State"]), **kw)


def revoke(c, uid):
    return c.call(enums.Operation.REVOKE, payloads.RevokeRequestPayload(
        unique_identifier=attr.UniqueIdentifier(uid),
        revocation_reason=objects.RevocationReason(code=enums.RevocationReasonCode.CESSATION_OF_OPERATION)))


def destroy(c, uid, **kw):
    return c.call(enums.Operation.DESTROY, payloads.DestroyRequestPayload(unique_identifier=attr.UniqueIdentifier(uid)), **kw)


def state_report(item):
    """Outcome of Get Attributes(State) with every State attribute it carried."""
    r = outcome(item)
    states = []
    if item.response_payload is not None and r["status"] == "SUCCESS":
        for a in item.response_payload.attributes or []:
            if a.attribute_name.value == "State":
                states.append(enum_name(a.attribute_value, enums.State))
    r["states"] = states
    r["state"] = states[0] if len(states) == 1 else None
    return r


def key_report(item):
    """Outcome of Get with the object's type, format, algorithm and bytes (hex)."""
    r = outcome(item)
    p = item.response_payload
    if p is None or r["status"] != "SUCCESS":
        return r
    r["uid"] = uid_of(item)
    r["object_type"] = enum_name(p.object_type, enums.ObjectType)
    secret = p.secret
    kb = secret.key_block
    r["key_format"] = enum_name(kb.key_format_type.value, enums.KeyFormatType)
    r["algorithm"] = enum_name(kb.cryptographic_algorithm.value, enums.CryptographicAlgorithm) if kb.cryptographic_algorithm else None
    r["length"] = kb.cryptographic_length.value if kb.cryptographic_length else None
    r["wrapped"] = kb.key_wrapping_data is not None
    r["key_hex"] = kb.key_value.key_material.value.hex()
    if hasattr(secret, "secret_data_type"):
        r["secret_data_type"] = enum_name(secret.secret_data_type.value, enums.SecretDataType)
    return r


def flow_mongod(args):
    c = Conn(args, version=args.version)
    it, _ = create(c)
    res = {"create": outcome(it)}
    if res["create"]["status"] != "SUCCESS":
        return res
    uid = uid_of(it)
    res["uid"] = uid
    res["get"] = key_report(get(c, uid)[0])
    res["activate"] = outcome(activate(c, uid)[0])
    res["state"] = state_report(get_state(c, uid)[0])
    c.close()
    # The periodic poll: a fresh TLS connection, one Get Attributes(State).
    p = Conn(args, version=args.version)
    res["poll"] = state_report(get_state(p, uid)[0])
    p.close()
    return res


def flow_mongod_existing(args):
    """mongod started with kmipKeyIdentifier: Get, then State, one connection."""
    c = Conn(args, version=args.version)
    res = {"get": key_report(get(c, args.uid)[0]), "state": state_report(get_state(c, args.uid)[0])}
    c.close()
    return res


def flow_percona(args):
    key = os.urandom(32)
    c = Conn(args, version="1.0")
    secret = SF.create(enums.ObjectType.SYMMETRIC_KEY, {
        "key_format_type": enums.KeyFormatType.RAW, "key_value": key,
        "cryptographic_algorithm": enums.CryptographicAlgorithm.AES, "cryptographic_length": 256})
    it, _ = c.call(enums.Operation.REGISTER, payloads.RegisterRequestPayload(
        object_type=enums.ObjectType.SYMMETRIC_KEY, template_attribute=template(), managed_object=secret),
        percona_header=True)
    res = {"register": outcome(it)}
    if res["register"]["status"] != "SUCCESS":
        return res
    uid = uid_of(it)
    res["uid"] = uid
    res["activate"] = outcome(activate(c, uid, percona_header=True)[0])
    c.close(notify=True)
    # Reading the key in a later session: State first, Get only if Active.
    s = Conn(args, version="1.0")
    res["state"] = state_report(get_state(s, uid, percona_header=True)[0])
    if res["state"]["state"] == "ACTIVE":
        g = key_report(get(s, uid, percona_header=True)[0])
        g["equal"] = g.get("key_hex") == key.hex()
        res["get"] = g
    s.close(notify=True)
    return res


def flow_secretdata(args):
    data = os.urandom(96)
    value = {"key_format_type": enums.KeyFormatType.RAW, "key_value": data,
             "secret_data_type": enums.SecretDataType.SEED}
    attrs = []
    if args.newer:
        value["key_format_type"] = enums.KeyFormatType.OPAQUE
        attrs = [AF.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_USAGE_MASK, usage_mask(0))]
    secret = SF.create(enums.ObjectType.SECRET_DATA, value)

    def one(op, payload):
        c = Conn(args, version="1.0")
        try:
            return c.call(op, payload)[0]
        finally:
            c.close(notify=False)

    it = one(enums.Operation.REGISTER, payloads.RegisterRequestPayload(
        object_type=enums.ObjectType.SECRET_DATA,
        template_attribute=objects.TemplateAttribute(attributes=attrs), managed_object=secret))
    res = {"register": outcome(it)}
    if res["register"]["status"] != "SUCCESS":
        return res
    uid = uid_of(it)
    res["uid"] = uid
    res["activate"] = outcome(one(enums.Operation.ACTIVATE, payloads.ActivateRequestPayload(unique_identifier=attr.UniqueIdentifier(uid))))
    g = key_report(one(enums.Operation.GET, payloads.GetRequestPayload(unique_identifier=uid)))
    g["equal"] = g.get("key_hex") == data.hex()
    res["get"] = g
    return res


def flow_mongocrypt_delegated(args):
    """Newer libmongocrypt with delegated encryption (KMIP 1.2, one operation
    per connection, abrupt close): Create AES-256 (usage mask 12), Activate,
    Encrypt 96 bytes with AES-CBC/PKCS5 and a server-generated IV, Decrypt."""
    data = os.urandom(96)

    def one(op, payload):
        c = Conn(args, version="1.2")
        try:
            return c.call(op, payload)[0]
        finally:
            c.close(notify=False)

    def params(encrypt):
        return attr.CryptographicParameters(
            block_cipher_mode=enums.BlockCipherMode.CBC, padding_method=enums.PaddingMethod.PKCS5,
            cryptographic_algorithm=enums.CryptographicAlgorithm.AES, random_iv=True if encrypt else None)

    it = one(enums.Operation.CREATE, payloads.CreateRequestPayload(
        object_type=enums.ObjectType.SYMMETRIC_KEY, template_attribute=template()))
    res = {"create": outcome(it)}
    if res["create"]["status"] != "SUCCESS":
        return res
    uid = uid_of(it)
    res["uid"] = uid
    res["activate"] = outcome(one(enums.Operation.ACTIVATE, payloads.ActivateRequestPayload(unique_identifier=attr.UniqueIdentifier(uid))))
    it = one(enums.Operation.ENCRYPT, payloads.EncryptRequestPayload(unique_identifier=uid, cryptographic_parameters=params(True), data=data))
    res["encrypt"] = outcome(it)
    if res["encrypt"]["status"] != "SUCCESS":
        return res
    ct, iv = it.response_payload.data, it.response_payload.iv_counter_nonce
    # Reported so the caller can check the cipher on its own with the key.
    res["plaintext_hex"], res["ciphertext_hex"], res["iv_hex"] = data.hex(), (ct or b"").hex(), (iv or b"").hex()
    it = one(enums.Operation.DECRYPT, payloads.DecryptRequestPayload(unique_identifier=uid, cryptographic_parameters=params(False), data=ct, iv_counter_nonce=iv))
    res["decrypt"] = outcome(it)
    if res["decrypt"]["status"] == "SUCCESS":
        res["equal"] = it.response_payload.data == data
    return res


def locate_ids(item):
    r = outcome(item)
    ids = []
    if item.response_payload is not None and r["status"] == "SUCCESS":
        ids = list(item.response_payload.unique_identifiers or [])
        ids = [getattr(u, "value", u) for u in ids]
    r["ids"] = ids
    return r


def flow_locate(args):
    name = "kmipflow-%s" % os.urandom(6).hex()
    c = Conn(args, version=args.version)
    it, _ = create(c, name=name)
    res = {"create": outcome(it), "name": name}
    if res["create"]["status"] != "SUCCESS":
        return res
    uid = uid_of(it)
    res["uid"] = uid
    res["activate"] = outcome(activate(c, uid)[0])
    by_name = [AF.create_attribute(enums.AttributeType.NAME, name)]
    res["by_name"] = locate_ids(c.call(enums.Operation.LOCATE, payloads.LocateRequestPayload(attributes=by_name))[0])
    by_type_state = [
        AF.create_attribute(enums.AttributeType.OBJECT_TYPE, enums.ObjectType.SYMMETRIC_KEY),
        AF.create_attribute(enums.AttributeType.STATE, enums.State.ACTIVE),
    ]
    res["by_type_state"] = locate_ids(c.call(enums.Operation.LOCATE, payloads.LocateRequestPayload(attributes=by_type_state))[0])
    missing = [AF.create_attribute(enums.AttributeType.NAME, name + "-absent")]
    res["by_absent_name"] = locate_ids(c.call(enums.Operation.LOCATE, payloads.LocateRequestPayload(attributes=missing))[0])
    c.close()
    return res


def flow_lifecycle(args):
    c = Conn(args, version=args.version)
    it, _ = create(c)
    res = {"create": outcome(it)}
    if res["create"]["status"] != "SUCCESS":
        return res
    uid = uid_of(it)
    res["uid"] = uid
    res["state_new"] = state_report(get_state(c, uid)[0])
    res["activate"] = outcome(activate(c, uid)[0])
    res["destroy_active"] = outcome(destroy(c, uid)[0])
    res["revoke"] = outcome(revoke(c, uid)[0])
    res["state_revoked"] = state_report(get_state(c, uid)[0])
    res["destroy"] = outcome(destroy(c, uid)[0])
    res["state_destroyed"] = state_report(get_state(c, uid)[0])
    res["get_destroyed"] = key_report(get(c, uid)[0])
    c.close()
    return res


# --- raw TTLV, for the wire-level shape checks ------------------------------

TYPES = {1: "Structure", 2: "Integer", 3: "LongInteger", 4: "BigInteger", 5: "Enumeration",
         6: "Boolean", 7: "TextString", 8: "ByteString", 9: "DateTime", 10: "Interval"}


def tag_name(t):
    try:
        return enums.Tags(t).name
    except ValueError:
        return "0x%06x" % t


def ttlv_tree(b):
    """Parse TTLV bytes into [{tag, type, value}], structures recursively."""
    out, i = [], 0
    while i < len(b):
        if len(b) - i < 8:
            raise ValueError("truncated TTLV header at offset %d" % i)
        tag = int.from_bytes(b[i:i + 3], "big")
        typ = b[i + 3]
        (length,) = struct.unpack(">I", b[i + 4:i + 8])
        body = b[i + 8:i + 8 + length]
        if len(body) != length:
            raise ValueError("truncated TTLV value at offset %d" % i)
        node = {"tag": tag_name(tag), "type": TYPES.get(typ, str(typ))}
        if typ == 1:
            node["value"] = ttlv_tree(body)
        elif typ in (2, 5):
            node["value"] = struct.unpack(">i" if typ == 2 else ">I", body)[0]
        elif typ in (3, 9, 10):
            node["value"] = int.from_bytes(body, "big", signed=typ != 10)
        elif typ == 7:
            node["value"] = body.decode("utf-8", "replace")
        else:
            node["value"] = body.hex()
        out.append(node)
        i += 8 + length + (8 - length % 8) % 8  # every value is padded to 8 bytes
    return out


def flow_wire(args):
    """Responses as TTLV trees: a successful Get and Get Attributes(State) on a
    new active key, and failures (Get of an unknown identifier, Destroy of an
    Active key), at the protocol version asked for; --percona-header sends
    libkmip's header (Maximum Response Size, Time Stamp)."""
    kw = {"percona_header": args.percona_header}
    c = Conn(args, version=args.version)
    it, raw_create = create(c, **kw)
    res = {"create": ttlv_tree(raw_create)}
    if outcome(it)["status"] != "SUCCESS":
        return res
    uid = uid_of(it)
    res["uid"] = uid
    activate(c, uid, **kw)
    res["get"] = ttlv_tree(get(c, uid, **kw)[1])
    res["state"] = ttlv_tree(get_state(c, uid, **kw)[1])
    res["get_unknown"] = ttlv_tree(get(c, "kmipflow-no-such-object", **kw)[1])
    res["state_unknown"] = ttlv_tree(get_state(c, "kmipflow-no-such-object", **kw)[1])
    res["destroy_active"] = ttlv_tree(destroy(c, uid, **kw)[1])
    c.close()
    return res


def one_op(args):
    c = Conn(args, version=args.version)
    if args.flow == "create":
        it, _ = create(c)
        r = outcome(it)
        if r["status"] == "SUCCESS":
            r["uid"] = uid_of(it)
    elif args.flow == "get":
        r = key_report(get(c, args.uid)[0])
    elif args.flow == "state":
        r = state_report(get_state(c, args.uid)[0])
    elif args.flow == "activate":
        r = outcome(activate(c, args.uid)[0])
    elif args.flow == "revoke":
        r = outcome(revoke(c, args.uid)[0])
    elif args.flow == "destroy":
        r = outcome(destroy(c, args.uid)[0])
    c.close()
    return r


def flow_watch(args):
    """mongod's State poll, every --every seconds on a fresh connection, until
    the State is --until or --max-seconds pass. Prints one JSON line per
    change of answer (the first poll included) with the wall-clock time it
    was seen, so the caller can time a revocation from its own clock."""
    import time
    last, deadline = None, time.time() + args.max_seconds
    while True:
        c = Conn(args, version=args.version)
        try:
            r = state_report(get_state(c, args.uid)[0])
        finally:
            c.close()
        seen = (r["status"], r["reason"], r["state"])
        if seen != last:
            r["t"] = time.time()
            print(json.dumps(r), flush=True)
            last = seen
        if r["state"] == args.until:
            return None
        if time.time() > deadline:
            return {"error": "timeout", "detail": "State %s not seen within %ss" % (args.until, args.max_seconds)}
        time.sleep(args.every)


FLOWS = {
    "mongod": flow_mongod, "mongod-existing": flow_mongod_existing, "percona": flow_percona,
    "secretdata": flow_secretdata, "locate": flow_locate, "lifecycle": flow_lifecycle,
    "wire": flow_wire, "watch": flow_watch, "mongocrypt-delegated": flow_mongocrypt_delegated,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("flow", choices=sorted(FLOWS) + ["create", "get", "state", "activate", "revoke", "destroy"])
    ap.add_argument("--addr", required=True, help="HOST:PORT of the KMIP server")
    ap.add_argument("--ca", required=True, help="CA bundle that verifies the server")
    ap.add_argument("--pem", required=True, help="client certificate and key in one PEM")
    ap.add_argument("--version", default="1.2", choices=sorted(VERSIONS))
    ap.add_argument("--uid", help="object identifier for the one-operation flows")
    ap.add_argument("--percona-header", action="store_true", help="wire: libkmip's request header (Maximum Response Size, Time Stamp)")
    ap.add_argument("--newer", action="store_true", help="secretdata: newer libmongocrypt's usage mask 0 and Opaque format")
    ap.add_argument("--until", default="DEACTIVATED", help="watch: the State that ends the watch")
    ap.add_argument("--every", type=float, default=0.1, help="watch: seconds between polls")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="watch: give up after this long")
    ap.add_argument("--timeout", type=float, default=20.0, help="socket timeout in seconds")
    args = ap.parse_args()
    try:
        res = FLOWS.get(args.flow, one_op)(args)
    except Exception as e:  # noqa: BLE001 - reported to the Go test, which fails
        print(json.dumps({"error": type(e).__name__, "detail": str(e)}))
        sys.exit(2)
    if res is not None:
        print(json.dumps(res))
    if res is not None and "error" in res:
        sys.exit(2)


if __name__ == "__main__":
    main()
