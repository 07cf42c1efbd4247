/*
 * keys.js — the phone's Ed25519 device key.
 *
 * The key pair is made on the phone and the secret never leaves it:
 *   - where WebCrypto has Ed25519 (Chromium 137+), the private key is a
 *     non-extractable CryptoKey, stored as such in IndexedDB (structured
 *     clone keeps it non-extractable: script can sign with it, never read it);
 *   - elsewhere the 32-byte seed is made with crypto.getRandomValues, used by
 *     @noble/ed25519, and stored sealed with AES-GCM under a non-extractable
 *     AES key that lives beside it in IndexedDB.
 * A key record is {kind: 'webcrypto', priv, pub} or {kind: 'sealed', wrap,
 * iv, sealed, pub}; pub is the 32 raw public-key bytes.
 */
import * as ed from '@noble/ed25519';

let webcryptoEd = null; /* null: not probed yet */

async function hasWebCryptoEd25519() {
  if (webcryptoEd !== null) return webcryptoEd;
  try {
    await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
    webcryptoEd = true;
  } catch {
    webcryptoEd = false;
  }
  return webcryptoEd;
}

/** Make a new key pair.  opts.forceSealed: use the noble path (tests). */
export async function generateKey(opts = {}) {
  if (!opts.forceSealed && (await hasWebCryptoEd25519())) {
    const kp = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
    const pub = new Uint8Array(await crypto.subtle.exportKey('raw', kp.publicKey));
    return { kind: 'webcrypto', priv: kp.privateKey, pub };
  }
  const seed = crypto.getRandomValues(new Uint8Array(32));
  try {
    return await sealSeed(seed);
  } finally {
    seed.fill(0);
  }
}

/** Seal a seed (fallback path; also used by the golden-vector tests). */
export async function sealSeed(seed) {
  const wrap = await crypto.subtle.generateKey({ name: 'AES-GCM', length: 256 }, false,
    ['encrypt', 'decrypt']);
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const sealed = new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, wrap, seed));
  const pub = await ed.getPublicKeyAsync(seed);
  return { kind: 'sealed', wrap, iv, sealed, pub };
}

/** A WebCrypto key from a known seed (golden-vector tests only). */
export async function importSeedWebCrypto(seed) {
  const pkcs8 = new Uint8Array(16 + 32);
  pkcs8.set([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]);
  pkcs8.set(seed, 16);
  const priv = await crypto.subtle.importKey('pkcs8', pkcs8, { name: 'Ed25519' }, false, ['sign']);
  const pub = await ed.getPublicKeyAsync(seed);
  return { kind: 'webcrypto', priv, pub };
}

/** Ed25519 signature (64 bytes) of msg with a key record. */
export async function sign(key, msg) {
  if (key.kind === 'webcrypto')
    return new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, key.priv, msg));
  if (key.kind === 'sealed') {
    const seed = new Uint8Array(await crypto.subtle.decrypt({ name: 'AES-GCM', iv: key.iv }, key.wrap,
      key.sealed));
    try {
      return await ed.signAsync(msg, seed);
    } finally {
      seed.fill(0);
    }
  }
  throw new Error('unknown key kind');
}

/** Verify an Ed25519 signature with a raw 32-byte public key. */
export async function verify(pub, msg, sig) {
  if (await hasWebCryptoEd25519()) {
    const k = await crypto.subtle.importKey('raw', pub, { name: 'Ed25519' }, false, ['verify']);
    return crypto.subtle.verify({ name: 'Ed25519' }, k, sig, msg);
  }
  return ed.verifyAsync(sig, msg, pub);
}
