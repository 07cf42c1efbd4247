/*
 * test_faults.c — injected write failures: a batch whose commit hits ENOSPC
 * or EIO is not acknowledged, leaves the store exactly as it was (verify
 * passes, no server seq consumed), reads keep working during the outage,
 * and the same batch succeeds once writes work again.
 *
 * The failures come from this executable interposing the write calls LMDB
 * makes (pwrite/pwrite64/writev/fdatasync/fsync): the symbols defined here
 * take precedence over libc's for liblmdb.so too.  ASan intercepts the same
 * calls itself, so this binary only injects in the normal build; the ASan
 * build runs the same assertions without the failures being armed and says
 * so (cmocka skip).  The full fault-injection suite (an LD_PRELOAD shim
 * against doorstepd) is issue #9.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include <cmocka.h>

#include "internal.h"
#include "storeutil.h"
#include "testutil.h"

#define NOW 1790000000000ull

static int fail_errno;     /* 0: writes work; else every write fails with it */
static int fail_sync_only; /* fail only fsync/fdatasync */
static unsigned long failures;

#ifndef DOORSTEP_SANITIZED
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*pwrite64_fn)(int, const void *, size_t, off64_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef int (*sync_fn)(int);

#define REAL(name, type) static type real_##name; \
    if (!real_##name) real_##name = (type)dlsym(RTLD_NEXT, #name)
#define FAIL_WRITE() do { if (fail_errno && !fail_sync_only) { \
    failures++; errno = fail_errno; return -1; } } while (0)
#define FAIL_SYNC() do { if (fail_errno) { failures++; errno = fail_errno; return -1; } } while (0)

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    REAL(pwrite, pwrite_fn);
    FAIL_WRITE();
    return real_pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
    REAL(pwrite64, pwrite64_fn);
    FAIL_WRITE();
    return real_pwrite64(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    REAL(writev, writev_fn);
    FAIL_WRITE();
    return real_writev(fd, iov, cnt);
}

int fdatasync(int fd)
{
    REAL(fdatasync, sync_fn);
    FAIL_SYNC();
    return real_fdatasync(fd);
}

int fsync(int fd)
{
    REAL(fsync, sync_fn);
    FAIL_SYNC();
    return real_fsync(fd);
}
#define INJECTING 1
#else
#define INJECTING 0
#endif

static void report_line(void *arg, const char *line)
{
    (void)arg;
    fprintf(stderr, "verify: %s\n", line);
}

static uint64_t last_sseq(store *s)
{
    store_txn *t;
    uint64_t sseq;
    assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
    assert_int_equal(store_last_sseq(t, &sseq), 0);
    store_abort(t);
    return sseq;
}

/* A durable store (fsync on), unlike su_store_new's. */
static store *durable_store(su_dir *d)
{
    char err[256];
    store *s = NULL;
    assert_int_equal(store_init(d->data, d->key, DOORSTEP_SOURCE_DIR "/crdt/schema/yibao.json",
                                2026, err, sizeof err), 0);
    assert_int_equal(store_open(d->data, d->key, NULL, &s, err, sizeof err), 0);
    return s;
}

static void run_outage(int err, int sync_only)
{
    su_dir d;
    su_dir_make(&d, "faults");
    store *s = durable_store(&d);
    su_dev dev;
    su_dev_init(&dev, 1);
    su_ops o = {0};
    crdt_buf env[4] = {{0}};
    for (int i = 0; i < 4; i++) {
        char note[32];
        snprintf(note, sizeof note, "visit %d", i);
        su_ops_reset(&o);
        su_set_str(&o, "community", "C01");
        su_set_str(&o, "grid", "G01");
        su_set_str(&o, "note", note);
        su_make(&dev, "household", "H1", &o, NOW + (uint64_t)i, &env[i], NULL);
    }
    /* Two deltas land normally. */
    store_outcome out[2];
    const uint8_t *e[2] = {env[0].p, env[1].p};
    size_t n[2] = {env[0].n, env[1].n};
    assert_int_equal(store_append_batch(s, e, n, 2, NOW, 86400000ull, out), 0);
    uint64_t before = last_sseq(s);
    assert_int_equal(before, 2);

    /* The disk fails: the next batch is not acknowledged. */
    e[0] = env[2].p;
    n[0] = env[2].n;
    e[1] = env[3].p;
    n[1] = env[3].n;
    fail_errno = err;
    fail_sync_only = sync_only;
    failures = 0;
    int rc = store_append_batch(s, e, n, 2, NOW, 86400000ull, out);
    fail_errno = 0;
    if (INJECTING) {
        assert_true(failures > 0);
        assert_true(rc == STORE_ENOSPC || rc == STORE_EIO);
        assert_int_equal(rc, err == ENOSPC ? STORE_ENOSPC : STORE_EIO);
        assert_true(store_retryable(rc));
        assert_int_equal(out[0].result, 0); /* no outcome, no ack */
        assert_int_equal(out[1].result, 0);
        /* Reads still work and see the old state. */
        assert_int_equal(last_sseq(s), before);
        store_txn *t;
        crdt_record *r = NULL;
        assert_int_equal(store_begin(s, STORE_RDONLY, &t), 0);
        assert_int_equal(store_get_record(t, "household", "H1", &r), 0);
        crdt_record_free(r);
        store_abort(t);
        uint64_t problems;
        assert_int_equal(store_verify(s, report_line, NULL, &problems), 0);
        /* Space returns: the same batch goes through, nothing duplicated. */
        rc = store_append_batch(s, e, n, 2, NOW, 86400000ull, out);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(out[0].result, STORE_APPLIED);
    assert_int_equal(out[1].result, STORE_APPLIED);
    assert_int_equal(last_sseq(s), before + 2);
    uint64_t problems;
    assert_int_equal(store_verify(s, report_line, NULL, &problems), 0);
    /* And the result survives a reopen. */
    store_close(s);
    char errbuf[256];
    assert_int_equal(store_open(d.data, d.key, NULL, &s, errbuf, sizeof errbuf), 0);
    assert_int_equal(last_sseq(s), before + 2);
    store_close(s);
    for (int i = 0; i < 4; i++) crdt_buf_free(&env[i]);
    su_ops_free(&o);
    su_dir_remove(&d);
    if (!INJECTING) skip();
}

static void test_enospc_on_write(void **state) { (void)state; run_outage(ENOSPC, 0); }
static void test_eio_on_write(void **state) { (void)state; run_outage(EIO, 0); }
static void test_eio_on_fsync(void **state) { (void)state; run_outage(EIO, 1); }

int main(void)
{
    wire_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enospc_on_write),
        cmocka_unit_test(test_eio_on_write),
        cmocka_unit_test(test_eio_on_fsync),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
