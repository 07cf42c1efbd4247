// common.mjs — what the browser tests (dashboard.mjs, field.mjs) share:
// starting and stopping doorstepd, and polling the page.
import { spawn } from 'node:child_process';

/**
 * Start doorstepd with args (which must include --listen HOST:PORT; port 0
 * picks a free one).  Resolves with {proc, port, stderr()} once it prints
 * where it listens; rejects if it exits or is silent for 20 s.
 */
export function startDoorstepd(bin, args) {
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  proc.stderr.on('data', (d) => { err += d; });
  return new Promise((ok, fail) => {
    let out = '';
    const timer = setTimeout(() => fail(new Error('doorstepd did not start: ' + out + err)), 20000);
    proc.stdout.on('data', (d) => {
      out += d;
      const m = /ws:\/\/127\.0\.0\.1:(\d+)\/sync/.exec(out);
      if (m) { clearTimeout(timer); ok({ proc, port: Number(m[1]), stderr: () => err }); }
    });
    proc.on('exit', (c) => { clearTimeout(timer); fail(new Error(`doorstepd exited ${c}: ${err}`)); });
  });
}

/** Stop it with sig (SIGTERM: graceful), SIGKILL after 10 s. */
export async function stopDoorstepd(srv, sig = 'SIGTERM') {
  if (!srv || srv.proc.exitCode !== null) return;
  const done = new Promise((ok) => srv.proc.on('exit', ok));
  srv.proc.kill(sig);
  await Promise.race([done, new Promise((ok) => setTimeout(ok, 10000))]);
  if (srv.proc.exitCode === null) srv.proc.kill('SIGKILL');
}

// page.waitForFunction evaluates a string in the page, which the server's
// CSP (script-src 'self', no unsafe-eval) rightly refuses: poll instead.
export async function until(page, fn, arg, what, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    if (await page.evaluate(fn, arg)) return;
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await new Promise((ok) => setTimeout(ok, 100));
  }
}

/**
 * Chinese glyphs that render as boxes on the page: every distinct CJK
 * character of the visible text (up to 400) is drawn on a canvas in the font
 * its element uses, and compared, pixel for pixel, with a character no font
 * has (U+10FFFD, which every browser draws as its missing-glyph box or as
 * nothing).  Resolves with the characters that look like it, so [] is the
 * pass.  A page with no CJK font at all fails with every character.
 */
export function boxedGlyphs(page) {
  return page.evaluate(() => {
    const chars = new Map();   // char -> font family of an element that shows it
    const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n && chars.size < 400; n = walk.nextNode()) {
      const el = n.parentElement;
      if (!el || !el.checkVisibility()) continue;
      for (const ch of n.data.match(/[\u3400-\u9fff\uff00-\uffef\u3000-\u303f]/g) || []) {
        if (!chars.has(ch)) chars.set(ch, getComputedStyle(el).fontFamily);
      }
    }
    const c = document.createElement('canvas');
    c.width = 32; c.height = 32;
    const g = c.getContext('2d', { willReadFrequently: true });
    const draw = (ch, fam) => {
      g.clearRect(0, 0, 32, 32);
      g.font = `24px ${fam}`;
      g.fillStyle = '#000';
      g.textBaseline = 'top';
      g.fillText(ch, 2, 2);
      return g.getImageData(0, 0, 32, 32).data.join(',');
    };
    const boxed = [];
    for (const [ch, fam] of chars) if (draw(ch, fam) === draw('\u{10FFFD}', fam)) boxed.push(ch);
    return boxed;
  });
}

/**
 * Latin words on a Chinese screen: visible text outside <code> (where
 * machine identifiers a person copies are set), split into words; a word
 * with a digit (ids such as C01-G01, H00014, P00014-2), or in allow, passes.
 * Resolves with the words that do not, with where they are.
 */
export function latinWords(page, allow) {
  return page.evaluate((allowed) => {
    const ok = new Set(allowed);
    const WORD = /[A-Za-z0-9*][A-Za-z0-9_.'*-]*/g;   // "018X" of a masked ID number is one word
    const found = [];
    const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode()) {
      const el = n.parentElement;
      if (!el || el.closest('code, script, style') || !el.checkVisibility()) continue;
      for (const w of n.data.match(WORD) || []) {
        if (!/[A-Za-z]/.test(w) || /\d/.test(w) || ok.has(w)) continue;
        found.push(`${w} (in <${el.tagName.toLowerCase()}> "${n.data.trim().slice(0, 60)}")`);
      }
    }
    for (const el of document.querySelectorAll('[title], [placeholder], [aria-label]')) {
      if (!el.checkVisibility()) continue;
      for (const a of ['title', 'placeholder', 'aria-label']) {
        for (const w of (el.getAttribute(a) || '').match(WORD) || []) {
          if (/[A-Za-z]/.test(w) && !/\d/.test(w) && !ok.has(w)) found.push(`${w} (in ${a} "${el.getAttribute(a).slice(0, 60)}")`);
        }
      }
    }
    return found;
  }, allow);
}
