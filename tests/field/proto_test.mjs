// proto_test.mjs — the field app's wire bytes against the protocol's own
// examples: the golden vectors (tests/vectors/deltas.txt) and the captured
// session of docs/PROTOCOL.md ("A full session in hex").  Runs in Node 20,
// whose WebCrypto has Ed25519, through both key paths of clients/field/src/keys.js
// (non-extractable WebCrypto key, and the sealed @noble/ed25519 fallback).
// usage: node tests/field/proto_test.mjs tests/vectors/deltas.txt
import { readFileSync } from 'node:fs';
import { importSeedWebCrypto, sealSeed, sign, verify } from '../../clients/field/src/keys.js';
import {
  authInput, chainHash, decodeFrame, deltaSignInput, encodeEnvelope, encodeFrame, hex, keyInput,
  parseEnrollment, checkServerUrl, unhex,
} from '../../clients/field/src/proto.js';
import { decodeDelta, encodeDelta, decodeRecord, encodeRecord, newRecord, applyDelta, compileSchema,
  visibleValues, observedDots } from '../../clients/field/src/crdt.js';
import { checkIdnum, checkPhone, checkDate, checkValue, idCheckChar } from '../../clients/field/src/validate.js';
import { STRINGS } from '../../clients/field/src/i18n.js';

let failed = 0;
function check(name, ok, detail = '') {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${ok ? '' : ' ' + detail}`);
  if (!ok) failed++;
}

const vec = {};
for (const line of readFileSync(process.argv[2], 'utf8').split('\n')) {
  const m = /^([a-z-]+): ([0-9a-f]+)$/.exec(line.trim());
  if (m) vec[m[1]] = m[2];
}

// 1. Golden envelope: delta-set-name signed with seed 0x2a * 32, and its chain hash.
const seed2a = new Uint8Array(32).fill(0x2a);
const delta = unhex(vec['delta-set-name']);
for (const [label, key] of [['webcrypto', await importSeedWebCrypto(seed2a)], ['sealed', await sealSeed(seed2a)]]) {
  const env = encodeEnvelope(delta, await sign(key, deltaSignInput(delta)));
  check(`envelope-set-name (${label} key)`, hex(env) === vec['envelope-set-name'], hex(env));
}
check('hash-set-name', hex(chainHash(delta)) === vec['hash-set-name'], hex(chainHash(delta)));

// 1a. The key record's signed bytes (docs/PROTOCOL.md, "Key records"), as test_envelope.c spells them.
{
  const pk = Uint8Array.from({ length: 32 }, (_, i) => 0xc0 + i);
  const want = '646f6f72737465702f76312f6b657900' + '0000012c' + '00000003' + hex(pk);
  check('key record input: "doorstep/v1/key" NUL || d BE32 || e BE32 || pk', hex(keyInput(300, 3, pk)) === want,
    hex(keyInput(300, 3, pk)));
}

// 1b. The JS delta codec reproduces every golden delta byte for byte.
for (const name of ['delta-set-name', 'delta-mixed', 'delta-tombstone']) {
  const b = unhex(vec[name]);
  check(`${name} decodes and re-encodes byte for byte`, hex(encodeDelta(decodeDelta(b))) === vec[name]);
}
const schema = compileSchema(JSON.parse(readFileSync(new URL('../../crdt/schema/yibao.json', import.meta.url))));
const rec = newRecord('person', 'P-0001');
applyDelta(rec, decodeDelta(unhex(vec['delta-set-name'])), schema);
applyDelta(rec, { d: 42, e: 1, h: (1790000000001n << 16n), i: 'P-0001', k: 'person', p: new Uint8Array(32), s: 2n,
  o: [{ f: 'name', o: 'set', v: '张山', x: [[42, 1n]] }] }, schema);
check('delta-mixed supersedes the name it observed', visibleValues(rec, 'name').map((v) => v.value).join() === '张山');
check('a record round-trips through its bytes', hex(encodeRecord(decodeRecord(encodeRecord(rec)))) === hex(encodeRecord(rec)));
check('observed dots of the name', JSON.stringify(observedDots(rec, 'name').map(([d, s]) => [d, Number(s)])) === '[[42,2]]');

// 2. The captured session: hello, auth signature, the pushed envelope and its hash.
const docHex = (s) => unhex(s.replace(/\s+/g, ''));
const hello = decodeFrame(docHex(`85 a1 6e c4 20 64 76 c6 90 42 eb 30 25 6b 1c c7
58 c3 51 a0 52 91 e9 10 9e 7a fb 03 97 e5 0d b0 a8 6e e7 fd 00 a3 6e 6f 77 cf 00 00 01 a2 0c db
02 54 a3 73 72 76 c4 20 94 94 b4 85 e5 d0 b4 99 90 14 44 85 b7 06 b7 74 1c be 88 cf 66 d8 29 e6
9e c7 dc 94 43 9c 2d e2 a1 74 a5 68 65 6c 6c 6f a1 76 01`));
const authFrame = docHex(`85 a1 64 01 a1 65 01 a1 6e c4 20 11 11 11 11 11
11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 11 a1 73 c4 40 74
ab 3a 53 12 b8 49 64 41 00 6b 65 ad 3e cc 43 49 fe fc 95 8b 76 91 9d 42 2c 99 23 c1 62 f6 a6 84
e1 a6 3b d3 42 df 7b b1 85 a4 61 28 5c 43 10 25 5d a3 7f 6a 31 39 ad 05 28 0a a8 16 4a ec 0b a1
74 a4 61 75 74 68`);
const seed01 = new Uint8Array(32); seed01[0] = 1;
const dev1 = await importSeedWebCrypto(seed01);
check('device 1 public key', hex(dev1.pub) === 'cecc1507dc1ddd7295951c290888f095adb9044d1b73d696e6df065d683bd4fc', hex(dev1.pub));
const n = new Uint8Array(32).fill(0x11);
const s = await sign(dev1, authInput(hello.srv, hello.n, n, 1, 1));
const auth = encodeFrame({ t: 'auth', d: 1, e: 1, n, s });
check('auth frame byte for byte', hex(auth) === hex(authFrame), hex(auth));
check('hello.now decodes', Number(hello.now) === 1795512009300);
const pushedDelta = docHex(`88 a1 64 01 a1 65 01 a1 68 cf 01 a2 0c db 02 55 00 00 a1 69 a2 48 31 a1 6b a9 68
6f 75 73 65 68 6f 6c 64 a1 6f 91 83 a1 66 a4 6e 6f 74 65 a1 6f a3 73 65 74 a1 76 a6 e8 b5 b0 e8
ae bf a1 70 c4 20 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00 00 00 a1 73 01`);
const env = encodeEnvelope(pushedDelta, await sign(dev1, deltaSignInput(pushedDelta)));
check('session envelope signature', hex(env).endsWith('09b5f4f7b36484b3dbb12ec39b346c38858d2fc3c5c16017b89c27c23e7947e59d2d2feb6993c465849efb46c0252a1f165bee8bfa07b4717865093bea5fbd08'), hex(env));
check('session chain hash', hex(chainHash(pushedDelta)) === '4a5297bc78dffb1061bdea7e20cf6aa00e82b90deb461464e8b64e26be262f11');
check('push frame byte for byte', hex(encodeFrame({ t: 'push', id: 1, d: [env] })).startsWith('83a16491c4ad82a162c464'));
check('verify accepts', await verify(dev1.pub, deltaSignInput(pushedDelta), unhex(hex(env).slice(-128))));
const bad = unhex(hex(env).slice(-128)); bad[0] ^= 1;
check('verify refuses a changed signature', !(await verify(dev1.pub, deltaSignInput(pushedDelta), bad)));

// 3. Enrollment text, URL policy, and the validation rules the server applies.
const e = parseEnrollment('doorstep://enroll?server=ws%3A%2F%2F127.0.0.1%3A8099%2Fsync&token=ef6hdqopla2k3tgqvrxuvprv6m&spk=c9fe790e8da48e316402b7433a814051cdaae22632ceae9b1e15eb7a6a09afcb');
check('enrollment URI', e.token === 'ef6hdqopla2k3tgqvrxuvprv6m' && e.server === 'ws://127.0.0.1:8099/sync' && e.spk.length === 32);
check('bare token, upper case', parseEnrollment(' EF6HDQOPLA2K3TGQVRXUVPRV6M ').token === 'ef6hdqopla2k3tgqvrxuvprv6m');
let threw = false; try { parseEnrollment('hello'); } catch { threw = true; }
check('garbage token refused', threw);
threw = false; try { checkServerUrl('ws://station.example/sync'); } catch (x) { threw = x.message === 'insecure'; }
check('ws:// to a non-loopback host refused', threw);
check('wss:// accepted', checkServerUrl('wss://station.example/sync') === 'wss://station.example/sync');
const id17 = '11010519491231002';
check('ID number checksum', checkIdnum(id17 + idCheckChar(id17)) === null && checkIdnum(id17 + '0') === 'idnum_check');
check('ID number date', checkIdnum('110105194902300021') !== null);
check('phone', checkPhone('13812345678') === null && checkPhone('010-12345678') === null && checkPhone('12345') === 'phone');
check('date', checkDate('2024-02-29') === null && checkDate('2023-02-29') === 'date');

// "required" text (CRDT_EBLANK): blank, spaces and the ideographic space refused, as crdt_vspec_check.
const nameSpec = JSON.parse(readFileSync(new URL('../../crdt/schema/yibao.json', import.meta.url)))
  .kinds.find((k) => k.name === 'person').fields.find((f) => f.name === 'name');
check('required text: blank refused', ['', '  ', '\u3000', ' \t'].every((v) => checkValue(nameSpec, v) === 'required')
  && checkValue(nameSpec, ' 王芳 ') === null);

// 4. Refused values read the same on the phone as from the server (crdt_value_message's Chinese).
const errorsC = readFileSync(new URL('../../crdt/errors.c', import.meta.url), 'utf8');
const body = errorsC.slice(errorsC.indexOf('const char *crdt_value_message'));
const codes = { CRDT_EVALUE: -53, CRDT_EIDNUM: -54, CRDT_EPHONE: -55, CRDT_EDATE: -56, CRDT_EENUM: -57,
  CRDT_EKEY: -58, CRDT_ETEXT: -59, CRDT_EBLANK: -60 };
for (const [name, code] of Object.entries(codes)) {
  const m = new RegExp(`case ${name}:\\s*(?:return\\s*)?"([^"。]*)。`).exec(body);
  check(`field app text for ${name} is crdt_value_message's`, m && STRINGS.zh[`e_${code}`] === m[1]);
}

// Key records: the field app verifies a changes frame before applying it (sync.js verifyChanges).
{
  const ed = await import('@noble/ed25519');
  const { verifyChanges } = await import('../../clients/field/src/sync.js');
  const srvSeed = new Uint8Array(32).fill(0x07), otherSeed = new Uint8Array(32).fill(0x08);
  const srv = await ed.getPublicKeyAsync(srvSeed);
  const devPub = await ed.getPublicKeyAsync(seed2a);          // device 42's key (envelope-set-name)
  const env = unhex(vec['envelope-set-name']);
  const rec = async (seedForG, pub = devPub, d = 42) =>
    ({ d, e: 1, g: await ed.signAsync(keyInput(d, 1, pub), seedForG), p: pub });
  const outcome = async (f) => { try { await verifyChanges(f, srv); return 'ok'; } catch (e) { return e.code || e.message; } };
  check('changes: a genuine envelope with its key record verifies',
    await outcome({ e: [env], k: [await rec(srvSeed)] }) === 'ok');
  const bad = env.slice();
  bad[bad.length - 1] ^= 1;
  check('changes: a damaged envelope signature is refused as forged',
    await outcome({ e: [bad], k: [await rec(srvSeed)] }) === 'forged');
  check('changes: a key record not signed by the server is refused as forged',
    await outcome({ e: [env], k: [await rec(otherSeed)] }) === 'forged');
  check('changes: an envelope without its key record is refused as forged',
    await outcome({ e: [env], k: [] }) === 'forged');
  check('changes: a key record naming another key is refused as forged',
    await outcome({ e: [env], k: [await rec(srvSeed, await ed.getPublicKeyAsync(otherSeed))] }) === 'forged');
}

console.log(failed ? `${failed} check(s) failed` : 'all checks passed');
process.exit(failed ? 1 : 0);
