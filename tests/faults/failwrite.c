/*
 * failwrite.c — LD_PRELOAD shim that makes writes and syncs of regular files
 * fail, for fault-injection tests (issue #9, docs/RELIABILITY.md).
 *
 * Intercepts write, pwrite, pwrite64, writev, pwritev, fsync and fdatasync.
 * Only calls on regular files whose path starts with FAILWRITE_PATH
 * (default: any regular file) are counted; sockets and pipes are never
 * touched.  Configured by environment variables:
 *
 *   FAILWRITE_OPS    comma list of the calls to fail: write,sync (default
 *                    "write,sync"; "write" = the write family, "sync" =
 *                    fsync/fdatasync)
 *   FAILWRITE_ERRNO  ENOSPC (default) or EIO
 *   FAILWRITE_NTH    fail from the Nth counted call on (1 = the first; default 1)
 *   FAILWRITE_COUNT  fail this many calls, then succeed again (default: no end)
 *   FAILWRITE_ARM    a file name: the shim fails only while this file exists
 *                    (lets a test switch "disk full" on and off at run time);
 *                    counting starts when it appears
 *
 * Each failure is logged on stderr as "failwrite: <call> fd N -> <errno>".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);
typedef int (*sync_fn)(int);

static atomic_long counted;
static atomic_long failed;

static int want_errno(void)
{
    const char *e = getenv("FAILWRITE_ERRNO");
    return e && !strcmp(e, "EIO") ? EIO : ENOSPC;
}

static int armed(void)
{
    const char *arm = getenv("FAILWRITE_ARM");
    if (!arm || !*arm) return 1;
    struct stat st;
    if (stat(arm, &st) != 0) {
        atomic_store(&counted, 0);
        atomic_store(&failed, 0);
        return 0;
    }
    return 1;
}

static int tracked_fd(int fd)
{
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    const char *prefix = getenv("FAILWRITE_PATH");
    if (!prefix || !*prefix) return 1;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    return strncmp(path, prefix, strlen(prefix)) == 0;
}

/* Should this call fail?  kind: "write" or "sync". */
static int should_fail(const char *call, const char *kind, int fd)
{
    const char *ops = getenv("FAILWRITE_OPS");
    if (!ops) ops = "write,sync";
    if (!strstr(ops, kind)) return 0;
    if (!armed() || !tracked_fd(fd)) return 0;
    long n = atomic_fetch_add(&counted, 1) + 1;
    const char *nth = getenv("FAILWRITE_NTH"), *cnt = getenv("FAILWRITE_COUNT");
    long from = nth ? atol(nth) : 1;
    if (n < from) return 0;
    if (cnt && atomic_load(&failed) >= atol(cnt)) return 0;
    atomic_fetch_add(&failed, 1);
    int e = want_errno();
    char msg[128];
    int m = snprintf(msg, sizeof msg, "failwrite: %s fd %d -> %s\n", call, fd,
                     e == EIO ? "EIO" : "ENOSPC");
    static write_fn real_write_log;
    if (!real_write_log) real_write_log = (write_fn)dlsym(RTLD_NEXT, "write");
    if (real_write_log && m > 0) real_write_log(2, msg, (size_t)m);
    errno = e;
    return 1;
}

#define REAL(name, type) \
    static type real_##name; \
    if (!real_##name) real_##name = (type)dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *buf, size_t n)
{
    REAL(write, write_fn);
    if (should_fail("write", "write", fd)) return -1;
    return real_write(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    REAL(pwrite, pwrite_fn);
    if (should_fail("pwrite", "write", fd)) return -1;
    return real_pwrite(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off);
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    REAL(pwrite64, pwrite_fn);
    if (should_fail("pwrite64", "write", fd)) return -1;
    return real_pwrite64(fd, buf, n, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    REAL(writev, writev_fn);
    if (should_fail("writev", "write", fd)) return -1;
    return real_writev(fd, iov, cnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    REAL(pwritev, pwritev_fn);
    if (should_fail("pwritev", "write", fd)) return -1;
    return real_pwritev(fd, iov, cnt, off);
}

int fsync(int fd)
{
    REAL(fsync, sync_fn);
    if (should_fail("fsync", "sync", fd)) return -1;
    return real_fsync(fd);
}

int fdatasync(int fd)
{
    REAL(fdatasync, sync_fn);
    if (should_fail("fdatasync", "sync", fd)) return -1;
    return real_fdatasync(fd);
}
