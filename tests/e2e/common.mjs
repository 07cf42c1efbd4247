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
