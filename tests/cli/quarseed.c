/*
 * quarseed.c — test-only helper for tests/cli/admin (never installed):
 * signs real deltas as simulated phones and appends them through the store
 * API, so the CLI test has devices, records and quarantine entries to
 * administer without a running server.
 *
 *   quarseed DATA KEYFILE setup
 *       devices 1 (张三) and 2 (李四) with keys at epoch 1; households
 *       H001, H002 in C01/C01-G01, H003 in C01/C01-G02 (device 1),
 *       H004 in C02/C02-G01 and person P001 in H001 (device 2)
 *   quarseed DATA KEYFILE push DEV HOUSEHOLD [--ahead] NOTE...
 *       device DEV's next deltas (one per NOTE, chained as a phone would),
 *       each setting the household's note; --ahead dates them 25 h in the
 *       future.  Prints one outcome line per delta.
 *
 * The phone's chain continues from the server's chain head, so after a
 * revocation (when the server's head stops) the phone's later deltas are
 * numbered as the phone would number them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "storeutil.h"

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void report(const char *what, store_outcome o)
{
    switch (o.result) {
    case STORE_APPLIED: printf("%s: applied sseq %llu\n", what, (unsigned long long)o.sseq); break;
    case STORE_DUPLICATE: printf("%s: duplicate\n", what); break;
    case STORE_QUARANTINED: printf("%s: quarantined %s\n", what, store_qreason_name(o.code)); break;
    default: printf("%s: rejected %s\n", what, store_strerror(o.code)); break;
    }
}

static void phone(store *s, su_dev *d, uint32_t id)
{
    store_txn *t;
    su_dev_init(d, id);
    if (store_begin(s, STORE_RDONLY, &t)) exit(1);
    store_chain_head(t, id, &d->seq, d->prev);
    store_abort(t);
}

static void enroll(store *s, su_dev *d, const char *volunteer)
{
    store_txn *t;
    uint64_t now = now_ms();
    store_device dv = {.id = d->id, .state = STORE_DEV_ACTIVE, .epoch = 1, .created_ms = now,
                       .last_sync_ms = now};
    store_key k = {.dev = d->id, .epoch = 1, .state = STORE_KEY_ACTIVE, .created_ms = now,
                   .changed_ms = now};
    snprintf(dv.volunteer, sizeof dv.volunteer, "%s", volunteer);
    memcpy(k.pk, d->pk, 32);
    if (store_begin(s, STORE_RW, &t) || store_device_put(t, &dv) || store_key_put(t, &k) ||
        store_commit(t)) {
        fprintf(stderr, "quarseed: enroll failed\n");
        exit(1);
    }
}

static void household(store *s, su_dev *d, const char *hh, const char *comm, const char *grid)
{
    su_ops o = {0};
    crdt_buf env = {0};
    su_set_str(&o, "community", comm);
    su_set_str(&o, "grid", grid);
    su_set_str(&o, "address", "幸福路1号");
    su_make(d, "household", hh, &o, now_ms(), &env, NULL);
    report(hh, su_push(s, &env, now_ms()));
    su_ops_free(&o);
    crdt_buf_free(&env);
}

int main(int argc, char **argv)
{
    char err[512];
    store *s = NULL;
    store_opts opts = {0};
    if (argc == 4 && !strcmp(argv[1], "ledger")) {
        /* quarseed ledger N FILE: a valid N-person ledger (4 per household,
         * 50 households per grid) for tests/cli/killed_ctl. */
        unsigned long n = strtoul(argv[2], NULL, 10);
        FILE *f = fopen(argv[3], "w");
        if (!f || !n) return 2;
        fprintf(f, "household_id,community,grid,address,name,id_number,relation,note\n");
        for (unsigned long i = 0; i < n; i++) {
            char idn[19];
            su_idnum((unsigned)i + 1, idn);
            unsigned long h = i / 4, g = h / 50;
            fprintf(f, "K%06lu,C%02lu,C%02lu-G%03lu,幸福路%lu号,居民%lu,%s,%s,第%lu行的备注\n", h,
                    g / 20, g / 20, g, h, i, idn, i % 4 ? "其他" : "户主", i + 2);
        }
        return fclose(f) ? 1 : 0;
    }
    if (argc < 4) {
        fprintf(stderr, "usage: quarseed DATA KEYFILE setup | push DEV HOUSEHOLD [--ahead] NOTE...\n"
                        "       quarseed ledger N FILE\n");
        return 2;
    }
    if (store_open(argv[1], argv[2], &opts, &s, err, sizeof err)) {
        fprintf(stderr, "quarseed: %s\n", err);
        return 1;
    }
    su_dev a, b;
    if (!strcmp(argv[3], "setup")) {
        phone(s, &a, 1);
        phone(s, &b, 2);
        enroll(s, &a, "张三");
        enroll(s, &b, "李四");
        household(s, &a, "H001", "C01", "C01-G01");
        household(s, &a, "H002", "C01", "C01-G01");
        household(s, &a, "H003", "C01", "C01-G02");
        household(s, &b, "H004", "C02", "C02-G01");
        su_ops o = {0};
        crdt_buf env = {0};
        char idn[19];
        su_idnum(42, idn);
        su_set_str(&o, "name", "王小明");
        su_set_str(&o, "id_number", idn);
        su_set_str(&o, "household", "H001");
        su_make(&b, "person", "P001", &o, now_ms(), &env, NULL);
        report("P001", su_push(s, &env, now_ms()));
        su_ops_free(&o);
        crdt_buf_free(&env);
    } else if (!strcmp(argv[3], "push") && argc >= 7) {
        uint32_t id = (uint32_t)strtoul(argv[4], NULL, 10);
        const char *hh = argv[5];
        int i = 6;
        uint64_t skew = 0;
        if (!strcmp(argv[i], "--ahead")) {
            skew = 25ull * 3600 * 1000;
            i++;
        }
        phone(s, &a, id);
        for (; i < argc; i++) {
            su_ops o = {0};
            crdt_buf env = {0};
            su_set_str(&o, "note", argv[i]);
            su_make(&a, "household", hh, &o, now_ms() + skew, &env, NULL);
            report(argv[i], su_push(s, &env, now_ms()));
            su_ops_free(&o);
            crdt_buf_free(&env);
        }
    } else {
        fprintf(stderr, "quarseed: bad arguments\n");
        store_close(s);
        return 2;
    }
    store_close(s);
    return 0;
}
