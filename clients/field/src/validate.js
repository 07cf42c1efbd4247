/*
 * validate.js — the schema's value rules, checked on the phone as the
 * volunteer types, the same rules the server applies (crdt/validate.c,
 * crdt/schema.c crdt_vspec_check), so that an edit the phone accepts is one
 * the server accepts.  Each check returns null (fine) or an error key that
 * i18n.js turns into a sentence; the server's codes are given beside them.
 */
const te = new TextEncoder();

function leap(y) { return (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0; }
function ymdOk(y, m, d) {
  const dim = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
  if (y < 1900 || y > 2100 || m < 1 || m > 12 || d < 1) return false;
  return d <= dim[m - 1] + (m === 2 && leap(y) ? 1 : 0);
}

/** GB 11643 check character of the first 17 digits. */
export function idCheckChar(s17) {
  const w = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
  let sum = 0;
  for (let i = 0; i < 17; i++) sum += (s17.charCodeAt(i) - 48) * w[i];
  return '10X98765432'[sum % 11];
}

/** CRDT_EIDNUM (-54) unless s is a valid 18-character ID number (uppercase X). */
export function checkIdnum(s) {
  if (!/^\d{17}[\dX]$/.test(s)) return 'idnum_format';
  if (s.startsWith('000000')) return 'idnum_region';
  if (!ymdOk(+s.slice(6, 10), +s.slice(10, 12), +s.slice(12, 14))) return 'idnum_date';
  if (idCheckChar(s) !== s[17]) return 'idnum_check';
  return null;
}

/** Birth date and gender an ID number implies ({birth, gender} or null). */
export function idnumFacts(s) {
  if (checkIdnum(s)) return null;
  return { birth: `${s.slice(6, 10)}-${s.slice(10, 12)}-${s.slice(12, 14)}`,
    gender: (+s[16]) % 2 ? '男' : '女' };
}

/**
 * CRDT_EPHONE (-55) unless s is a mainland mobile number (11 digits, "1" then
 * 3..9) or a landline: "0" and 2 or 3 more area digits, an optional "-", and
 * 7 or 8 digits (crdt_check_phone's two area lengths, as one pattern).
 */
export function checkPhone(s) {
  return /^1[3-9]\d{9}$/.test(s) || /^0\d{2,3}-?\d{7,8}$/.test(s) ? null : 'phone';
}

/** CRDT_EDATE (-56): YYYY-MM-DD, a real date in 1900..2100. */
export function checkDate(s) {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(s);
  return m && ymdOk(+m[1], +m[2], +m[3]) ? null : 'date';
}

function hasControl(s) {
  return /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/.test(s);
}

/**
 * Check a value against a value spec of the schema (a field, or a log entry
 * member): {type, max_len, values, min, max}.  Returns null or an error key.
 */
export function checkValue(spec, v) {
  switch (spec.type) {
    case 'int':
      if (!Number.isInteger(v)) return 'value';
      return v < spec.min || v > spec.max ? 'range' : null;
    case 'bool': return typeof v === 'boolean' ? null : 'value';
    case 'text':
      if (typeof v !== 'string') return 'value';
      if (te.encode(v).length > spec.max_len) return 'text_long';
      if (hasControl(v)) return 'value';
      /* CRDT_EBLANK (-60): the schema's "required" text may not be blank */
      return spec.required && /^[ \t\n\r\u3000]*$/.test(v) ? 'required' : null;
    case 'date': return typeof v === 'string' ? checkDate(v) : 'value';
    case 'enum': return spec.values.includes(v) ? null : 'enum';
    case 'idnum': return typeof v === 'string' ? checkIdnum(v) : 'value';
    case 'phone': return typeof v === 'string' ? checkPhone(v) : 'value';
    case 'ref': return typeof v === 'string' && /^[A-Za-z0-9_.-]{1,64}$/.test(v) ? null : 'recid';
    default: return 'value';
  }
}

/** Check a log entry against the field's members: unknown, missing, bad values. */
export function checkEntry(field, entry) {
  for (const [k, v] of Object.entries(entry)) {
    const m = field.members.find((x) => x.name === k);
    if (!m) return 'value';
    const e = checkValue(m, v);
    if (e) return e;
  }
  for (const m of field.members) if (m.required && !(m.name in entry)) return 'required';
  return null;
}
