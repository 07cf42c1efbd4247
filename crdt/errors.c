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
    case CRDT_EBLANK: return "required text is empty";
    case CRDT_ESCHEMA: return "invalid schema";
    case CRDT_EMISMATCH: return "records or fields do not match";
    case CRDT_ECORRUPT: return "stored record is corrupt";
    default: return "unknown crdt error";
    }
}

const char *crdt_value_message(int code)
{
    switch (code) {
    case CRDT_EIDNUM:
        return "不是有效的身份证号码（格式、出生日期或校验位错误）。Not a valid GB 11643 ID number "
               "(format, birth date or checksum)";
    case CRDT_EENUM: return "不是允许的取值。Not one of the field's allowed values";
    case CRDT_EDATE: return "日期应为 YYYY-MM-DD。Not a valid YYYY-MM-DD date";
    case CRDT_EPHONE: return "不是有效的电话号码。Not a valid phone number";
    case CRDT_ETEXT: return "文字太长。Text too long for the field";
    case CRDT_EBLANK: return "必填，不能为空。Required: must not be empty";
    case CRDT_ERANGE: return "超出范围。Out of range";
    case CRDT_EVALUE: return "取值类型不对。Not a value of the field's type";
    case CRDT_ERECID: return "编号无效（1 至 64 个字母、数字或 _ . -）。Not a valid record id";
    case CRDT_EMISSING: return "缺少必填项。A required item is missing";
    case CRDT_EUNKNOWNKEY: return "含有未定义的项。Holds an item the field does not define";
    case CRDT_EKEY: return "年度（键）无效。The field's key is missing or invalid";
    default: return crdt_strerror(code);
    }
}
