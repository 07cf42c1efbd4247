/*
 * errors.c — crdt_strerror() and the default limits.
 *
 * Every CRDT_E* code in crdt.h has exactly one static message here; the
 * test suite checks that no code maps to the fallback text.
 */
#include "crdt.h"

const crdt_limits crdt_limits_default = CRDT_LIMITS_DEFAULT_INIT;

const char *crdt_strerror(int code)
{
    switch (code) {
    case CRDT_OK: return "ok";
    case CRDT_ENOMEM: return "out of memory";
    case CRDT_EINVAL: return "invalid argument";
    case CRDT_EHLC_DRIFT: return "clock too far ahead of the server";
    case CRDT_EHLC_RANGE: return "time outside the 48-bit millisecond range";
    case CRDT_ETRUNC: return "input ends inside a value";
    case CRDT_ETRAILING: return "bytes after the end of the value";
    case CRDT_EDEPTH: return "nesting too deep";
    case CRDT_ECOUNT: return "too many entries in an array or map";
    case CRDT_ELENGTH: return "declared length larger than the input";
    case CRDT_ESTRLEN: return "string too long";
    case CRDT_EBINLEN: return "binary too long";
    case CRDT_EEXT: return "ext types are not allowed";
    case CRDT_EDUPKEY: return "duplicate map key";
    case CRDT_EMAPKEY: return "map key is not a string";
    case CRDT_EUTF8: return "string is not valid UTF-8";
    case CRDT_ERESERVED: return "reserved msgpack type byte";
    case CRDT_ETOOBIG: return "message too large";
    case CRDT_EFLOAT: return "floats are not allowed";
    case CRDT_ETYPE: return "wrong type";
    case CRDT_EMISSING: return "required key missing";
    case CRDT_EUNKNOWNKEY: return "unknown key";
    case CRDT_ENONCANON: return "not in canonical encoding";
    case CRDT_ERANGE: return "number out of range";
    case CRDT_ERECID: return "invalid record id";
    case CRDT_ETOOMANYOPS: return "too many ops in one delta";
    case CRDT_EOPCODE: return "unknown op";
    case CRDT_EDUPOP: return "field changed twice in one delta";
    case CRDT_EOBS: return "observed dots not allowed here or invalid";
    case CRDT_ENOOPS: return "delta has no ops";
    case CRDT_EKIND: return "unknown record kind";
    case CRDT_EFIELD: return "unknown field";
    case CRDT_EOP: return "op does not fit the field's type";
    case CRDT_EVALUE: return "value does not fit the field's type";
    case CRDT_EIDNUM: return "invalid ID number (GB 11643)";
    case CRDT_EPHONE: return "invalid phone number";
    case CRDT_EDATE: return "invalid date (YYYY-MM-DD)";
    case CRDT_EENUM: return "value not allowed for this field";
    case CRDT_EKEY: return "field key missing, unexpected or invalid";
    case CRDT_ETEXT: return "text too long for this field";
    case CRDT_ESCHEMA: return "invalid schema";
    case CRDT_EMISMATCH: return "records or fields do not match";
    case CRDT_ECORRUPT: return "stored record is corrupt";
    default: return "unknown crdt error";
    }
}
