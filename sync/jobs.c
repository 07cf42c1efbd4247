/*
 * jobs.c — push jobs: verification (worker threads) and group commit (the
 * single writer thread).
 *
 * Invariants
 *   - sync_job_verify only reads (one read transaction per job) and only
 *     touches its own job, so any number of workers run it in parallel.
 *   - sync_jobs_commit appends every verified item of every job in one
 *     write transaction and returns only after the commit returned: the
 *     outcomes it leaves in the items are durable (or, on error, nothing of
 *     the batch was written and every job carries the error).
 *   - Items are appended in job order, and within a job in push order, so a
 *     device's deltas reach the chain check in the order it sent them.
 *   - Running out of memory (or a store error) is never a verdict on a
 *     delta: a push that could not be verified fails as a whole (commit_rc,
 *     retryable answer, nothing stored), and a batch whose commit fails
 *     stores nothing of any of its jobs.
 */
#include "sync.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Is household id h in the sorted scope? */
static bool in_scope(const store_ids *scope, const char *h, size_t hl)
{
    char id[CRDT_RECID_MAX + 1];
    if (hl == 0 || hl > CRDT_RECID_MAX) return false;
    memcpy(id, h, hl);
    id[hl] = 0;
    size_t lo = 0, hi = scope->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(scope->id[mid], id);
        if (c == 0) return true;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return false;
}

/*
 * Scope: a household record must be in the device's scope; a person record
 * must currently belong to a household in scope (it may move out); a person
 * the store does not know yet must be placed in scope by this delta.  Runs
 * in the writer's transaction, so earlier deltas of the batch count.
 */
static int delta_scope_ok(store_txn *t, const store_ids *scope, const crdt_delta *d)
{
    if (d->kind_len == 9 && !memcmp(d->kind, "household", 9))
        return in_scope(scope, d->id, d->id_len) ? 0 : SYNC_ESCOPE;
    if (!(d->kind_len == 6 && !memcmp(d->kind, "person", 6))) return SYNC_ESCOPE;
    char id[CRDT_RECID_MAX + 1];
    memcpy(id, d->id, d->id_len);
    id[d->id_len] = 0;
    crdt_record *r = NULL;
    int rc = store_get_record(t, "person", id, &r);
    if (rc == STORE_OK) {
        const crdt_field *f = crdt_record_field(r, "household", (crdt_blob){NULL, 0});
        bool ok = false;
        for (uint32_t i = 0; f && i < f->n && !ok; i++) {
            crdt_val v;
            if (!crdt_val_parse(f->e[i].v, &v) && v.t == CRDT_V_STR)
                ok = in_scope(scope, v.s, v.len);
        }
        bool placed = f && f->n > 0;
        crdt_record_free(r);
        if (ok) return 0;
        if (placed) return SYNC_ESCOPE; /* someone else's person */
    } else if (rc != STORE_ENOTFOUND) {
        return rc;
    }
    /* New (or not yet placed) person: the delta must place it in scope. */
    for (uint32_t i = 0; i < d->n_ops; i++) {
        const crdt_op *o = &d->ops[i];
        crdt_val v;
        if (o->field && o->field_len == 9 && !memcmp(o->field, "household", 9) &&
            !crdt_val_parse(o->val, &v) && v.t == CRDT_V_STR && in_scope(scope, v.s, v.len))
            return 0;
    }
    return SYNC_ESCOPE;
}

/* The key record of the frame for (dev, epoch) that the street signed, or NULL. */
static const sync_relay_key *relay_key(const sync_job *j, uint32_t dev, uint32_t epoch)
{
    for (uint32_t i = 0; i < j->n_relay_keys; i++)
        if (j->relay_keys[i].valid && j->relay_keys[i].dev == dev &&
            j->relay_keys[i].epoch == epoch)
            return &j->relay_keys[i];
    return NULL;
}

/*
 * A relay job: the envelopes are the street's phones' (and the street
 * server's own, device 0), verified with the frame's key records, each
 * checked against the street server key the frame names (pinned at the
 * first batch: store_relay_pin).  An envelope that fails any check is not
 * dropped and not merged: it is kept as STORE_Q_UNVERIFIED.  A key the
 * district already holds for that phone (an earlier batch) also verifies.
 */
static int relay_verify(store *st, const sync_config *cfg, sync_job *j)
{
    store_txn *t = NULL;
    store_device rd;
    int rc = store_begin(st, STORE_RDONLY, &t);
    if (rc) goto fail_all;
    if ((rc = store_device_get(t, j->dev, &rd))) goto fail_all;
    snprintf(j->relay_name, sizeof j->relay_name, "%s", rd.volunteer);
    rc = store_relay_pin(t, j->dev, j->relay_srv, false);
    if (rc == STORE_ERELAYKEY) {
        /* Not this relay's street: a verdict on the whole frame. */
        for (uint32_t i = 0; i < j->n; i++) j->items[i].code = STORE_ERELAYKEY;
        store_abort(t);
        return SYNC_OK;
    }
    if (rc) goto fail_all;
    for (uint32_t i = 0; i < j->n_relay_keys; i++) {
        sync_relay_key *k = &j->relay_keys[i];
        uint8_t m[WIRE_KEY_MSG_BYTES];
        uint32_t cdev;
        store_key held;
        /* A key this server already took from this street (an earlier
         * frame) needs no second check: only a new or changed one does. */
        rc = store_relay_map(t, j->dev, k->dev, NULL, false, &cdev);
        if (rc == STORE_OK) rc = store_key_get(t, cdev, k->epoch, &held);
        if (rc == STORE_OK && !sodium_memcmp(held.pk, k->pk, 32)) {
            k->valid = true;
            continue;
        }
        if (rc && rc != STORE_ENOTFOUND) goto fail_all;
        wire_key_msg(k->dev, k->epoch, k->pk, m);
        k->valid = crypto_sign_verify_detached(k->sig, m, sizeof m, j->relay_srv) == 0;
    }
    rc = 0;
    for (uint32_t i = 0; i < j->n_relay_admin; i++) {
        sync_relay_admin *ad = &j->relay_admin[i];
        crdt_buf m = {0};
        if ((rc = sync_admin_msg(ad->b, ad->n, &m))) goto fail_all;
        ad->valid = crypto_sign_verify_detached(ad->g, m.p, m.n, j->relay_srv) == 0 &&
                    sync_admin_parse(ad);
        crdt_buf_free(&m);
    }
    for (uint32_t i = 0; i < j->n; i++) {
        sync_job_item *it = &j->items[i];
        const uint8_t *db, *sig;
        size_t dl;
        int err_op;
        it->unverified = true; /* until every check passed */
        if (wire_envelope_decode(it->env, it->env_len, &cfg->lim, &db, &dl, &sig)) continue;
        rc = crdt_delta_decode(db, dl, &cfg->lim, j->arena, &it->delta, &err_op);
        if (rc == CRDT_ENOMEM) goto fail_all;
        if (rc) continue;
        it->dev = it->delta.dev;
        it->seq = it->delta.seq;
        if (crdt_schema_check_delta(store_schema(st), &it->delta, &err_op)) continue;
        const sync_relay_key *k = it->delta.dev ? relay_key(j, it->delta.dev, it->delta.epoch)
                                                : NULL;
        if (!it->delta.dev) {
            memcpy(it->key_pk, j->relay_srv, 32); /* the street server's own edit */
            it->key_from_frame = true;
        } else if (k) {
            memcpy(it->key_pk, k->pk, 32);
            it->key_from_frame = true;
        } else {
            uint32_t cdev;
            store_key key;
            rc = store_relay_map(t, j->dev, it->delta.dev, NULL, false, &cdev);
            if (rc == STORE_OK) rc = store_key_get(t, cdev, it->delta.epoch, &key);
            if (rc == STORE_ENOTFOUND) continue; /* no key: unverified */
            if (rc) goto fail_all;
            memcpy(it->key_pk, key.pk, 32);
        }
        rc = wire_delta_verify(db, dl, sig, it->key_pk);
        if (rc == CRDT_ENOMEM) goto fail_all;
        if (rc) continue;
        it->unverified = false;
        wire_delta_hash(db, dl, it->hash);
    }
    store_abort(t);
    return SYNC_OK;
fail_all:
    store_abort(t);
    for (uint32_t i = 0; i < j->n; i++) j->items[i].code = SYNC_EUNAVAILABLE;
    j->commit_rc = rc ? rc : STORE_EINVAL;
    return j->commit_rc;
}

int sync_job_verify(store *st, const sync_config *cfg, sync_job *j)
{
    if (j->relay) return relay_verify(st, cfg, j);
    store_txn *t = NULL;
    store_key key;
    uint32_t key_epoch = 0;
    int rc = store_begin(st, STORE_RDONLY, &t);
    if (rc) goto fail_all;
    store_ids_free(&j->scope);
    if ((rc = store_device_scope_get(t, j->dev, &j->scope))) goto fail_all;
    for (uint32_t i = 0; i < j->n; i++) {
        sync_job_item *it = &j->items[i];
        const uint8_t *db, *sig;
        size_t dl;
        int err_op;
        it->code = wire_envelope_decode(it->env, it->env_len, &cfg->lim, &db, &dl, &sig);
        if (it->code) continue;
        it->code = crdt_delta_decode(db, dl, &cfg->lim, j->arena, &it->delta, &err_op);
        if (it->code == CRDT_ENOMEM) goto nomem; /* the job's arena is unbounded */
        if (it->code) continue;
        it->dev = it->delta.dev;
        it->seq = it->delta.seq;
        if (it->delta.dev != j->dev) {
            it->code = SYNC_EDEVICE;
            continue;
        }
        if ((it->code = crdt_schema_check_delta(store_schema(st), &it->delta, &err_op))) continue;
        /* The key the delta names: the session's, or an older one that was
         * retired by rotation, valid up to its sealed seq. */
        if (key_epoch != it->delta.epoch) {
            key_epoch = 0;
            rc = store_key_get(t, j->dev, it->delta.epoch, &key);
            if (rc == STORE_OK) key_epoch = it->delta.epoch;
            else if (rc != STORE_ENOTFOUND) goto fail_all; /* no verdict on the key */
        }
        if (!key_epoch) {
            it->code = SYNC_EEPOCH;
            continue;
        }
        it->code = wire_delta_verify(db, dl, sig, key.pk);
        if (it->code == CRDT_ENOMEM) goto nomem;
        if (it->code) continue;
        /* A genuine signature by a key that should no longer sign (revoked,
         * or retired beyond the seq it sealed): kept in quarantine. */
        if (key.state == STORE_KEY_REVOKED) it->quarantine = STORE_Q_REVOKED;
        else if (key.state == STORE_KEY_RETIRED && it->delta.seq > key.sealed_seq)
            it->quarantine = STORE_Q_SEALED;
        wire_delta_hash(db, dl, it->hash);
    }
    store_abort(t);
    return SYNC_OK;
nomem:
    rc = CRDT_ENOMEM;
fail_all:
    /* The server could not judge the push (out of memory, store error):
     * that is no verdict on its deltas, so none of them may be answered
     * "rejected" (a device files a rejected delta away for good).  The job
     * fails as a whole: commit_rc makes sync_jobs_commit skip it and
     * sync_session_job_done answer with the retryable SYNC_EUNAVAILABLE,
     * and the item codes keep any other caller from appending them. */
    store_abort(t);
    for (uint32_t i = 0; i < j->n; i++) j->items[i].code = SYNC_EUNAVAILABLE;
    j->commit_rc = rc;
    return rc;
}

/* Append h (duplicates too: sync_jobs_commit sorts and dedupes once at the
 * end; a linear search per delta was quadratic in the batch's households). */
static int add_touched(char (**touched)[CRDT_RECID_MAX + 1], size_t *n, size_t *cap,
                       const char *h)
{
    if (!*h) return 0;
    if (*n && !strcmp((*touched)[*n - 1], h)) return 0; /* a push's run */
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        void *p = realloc(*touched, nc * sizeof **touched);
        if (!p) return CRDT_ENOMEM;
        *touched = p;
        *cap = nc;
    }
    strcpy((*touched)[(*n)++], h);
    return 0;
}

static int touched_cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Sort and drop duplicates. */
static void touched_unique(char (*touched)[CRDT_RECID_MAX + 1], size_t *n)
{
    size_t k = 0;
    if (*n < 2) return;
    qsort(touched, *n, sizeof *touched, touched_cmp);
    for (size_t i = 1; i < *n; i++)
        if (strcmp(touched[i], touched[k]) && ++k != i)
            memcpy(touched[k], touched[i], sizeof *touched);
    *n = k + 1;
}

/*
 * A relay's admin records, in the writer's txn: each new one (street aseq
 * beyond the last taken) goes into this server's audit log, under the
 * street's name, and a device record's state becomes that street phone's
 * state here (revocation never goes back).  One that does not verify is
 * noted in the audit log and otherwise ignored.
 */
static int relay_admin_commit(store_txn *t, sync_job *j, uint64_t now_ms)
{
    uint64_t last = 0, top = 0;
    char actor[STORE_AUDIT_ACTOR_MAX + 1], action[STORE_AUDIT_ACTION_MAX + 1];
    char detail[STORE_AUDIT_DETAIL_MAX + 1];
    int rc = store_relay_admin_cursor(t, j->dev, &last);
    if (rc) return rc;
    snprintf(actor, sizeof actor, "%.40s (relay %u)", j->relay_name, (unsigned)j->dev);
    for (uint32_t i = 0; i < j->n_relay_admin; i++) {
        sync_relay_admin *ad = &j->relay_admin[i];
        if (!ad->valid) {
            snprintf(detail, sizeof detail, "an admin record of relay %u does not verify "
                     "(not signed by the street's key, or malformed): ignored", (unsigned)j->dev);
            if ((rc = store_audit_append(t, now_ms, actor, "street.admin_unverified", detail, NULL)))
                return rc;
            continue;
        }
        if (ad->aseq <= last || ad->aseq <= top) continue; /* taken before (a resent frame) */
        top = ad->aseq;
        snprintf(action, sizeof action, "street.%.50s", ad->act);
        snprintf(detail, sizeof detail, "%.900s [street audit #%llu by %.63s]", ad->x,
                 (unsigned long long)ad->aseq, ad->by);
        if ((rc = store_audit_append(t, now_ms, actor, action, detail, NULL))) return rc;
        if (!ad->has_dev) continue;
        char label[64];
        uint32_t cdev;
        store_device d;
        snprintf(label, sizeof label, "%.40s #%u", j->relay_name, (unsigned)ad->dev);
        if ((rc = store_relay_map(t, j->dev, ad->dev, label, true, &cdev))) return rc;
        if ((rc = store_device_get(t, cdev, &d))) return rc;
        bool revoked = d.state == STORE_DEV_REVOKED_SOFT || d.state == STORE_DEV_REVOKED_HARD;
        if (d.state == ad->st || (revoked && ad->st < d.state)) continue;
        d.state = ad->st;
        d.revoked_at_seq = ad->rs;
        if ((rc = store_device_put(t, &d))) return rc;
    }
    if (top > last) return store_relay_admin_cursor_set(t, j->dev, top);
    return STORE_OK;
}

/* Keep a relayed envelope that failed verification (STORE_Q_UNVERIFIED). */
static int keep_unverified(store_txn *t, sync_job_item *it, uint32_t cdev, uint64_t now_ms)
{
    int rc = store_quarantine_put(t, STORE_Q_UNVERIFIED, cdev, it->seq, now_ms, it->env,
                                  it->env_len);
    if (rc) return rc;
    it->out.result = STORE_QUARANTINED;
    it->out.code = STORE_Q_UNVERIFIED;
    return STORE_OK;
}

/* Commit one relay job's items in the writer's txn t (see relay_verify). */
static int relay_commit(store_txn *t, const sync_config *cfg, sync_job *j, uint64_t now_ms)
{
    int rc = store_relay_pin(t, j->dev, j->relay_srv, true);
    if (rc == STORE_ERELAYKEY) { /* pinned by another job since the worker looked */
        for (uint32_t i = 0; i < j->n; i++) j->items[i].code = STORE_ERELAYKEY;
        return STORE_OK;
    }
    if (rc) return rc;
    for (uint32_t i = 0; i < j->n; i++) {
        sync_job_item *it = &j->items[i];
        char label[64];
        uint32_t cdev = 0;
        memset(&it->out, 0, sizeof it->out);
        if (it->code) continue;
        if (!it->unverified) {
            snprintf(label, sizeof label, "%.40s #%u", j->relay_name, (unsigned)it->delta.dev);
            if ((rc = store_relay_map(t, j->dev, it->delta.dev, label, true, &cdev))) return rc;
        }
        if (it->unverified) {
            /* Kept as evidence, under the chain device if there is one. */
            if (it->dev && store_relay_map(t, j->dev, it->dev, NULL, false, &cdev)) cdev = 0;
            if ((rc = keep_unverified(t, it, cdev, now_ms))) return rc;
            continue;
        }
        if (it->key_from_frame) {
            store_key k;
            rc = store_key_get(t, cdev, it->delta.epoch, &k);
            if (rc == STORE_ENOTFOUND) {
                memset(&k, 0, sizeof k);
                k.dev = cdev;
                k.epoch = it->delta.epoch;
                k.state = STORE_KEY_ACTIVE;
                memcpy(k.pk, it->key_pk, 32);
                k.created_ms = k.changed_ms = now_ms;
                rc = store_key_put(t, &k);
            } else if (rc == STORE_OK && sodium_memcmp(k.pk, it->key_pk, 32)) {
                /* The street vouches for another key for this (device,
                 * epoch) than it did before: the signature checks out with
                 * the new one, so keep the envelope, for an admin. */
                if ((rc = keep_unverified(t, it, cdev, now_ms))) return rc;
                continue;
            }
            if (rc) return rc;
        }
        store_item si = {it->env, it->env_len, &it->delta, {0}, 0, cdev, true};
        memcpy(si.hash, it->hash, CRDT_HASH_BYTES);
        if ((rc = store_append(t, &si, now_ms, cfg->max_ahead_ms, &it->out))) return rc;
        if (it->out.result == STORE_APPLIED &&
            (rc = store_relay_note_place(t, j->dev, it->out.household, now_ms)))
            return rc;
    }
    if ((rc = relay_admin_commit(t, j, now_ms))) return rc;
    if ((j->n || j->n_relay_admin) && (rc = store_device_seen(t, j->dev, now_ms)) &&
        rc != STORE_ENOTFOUND)
        return rc;
    return STORE_OK;
}

static int commit_once(store *st, const sync_config *cfg, sync_job *jobs, uint64_t now_ms)
{
    store_txn *t = NULL;
    int rc = store_begin(st, STORE_RW, &t);
    if (rc) return rc;
    for (sync_job *j = jobs; j; j = j->next) {
        if (j->commit_rc) continue; /* failed verification as a whole */
        if (j->relay) {
            if ((rc = relay_commit(t, cfg, j, now_ms))) {
                store_abort(t);
                return rc;
            }
            continue;
        }
        for (uint32_t i = 0; i < j->n; i++) {
            sync_job_item *it = &j->items[i];
            memset(&it->out, 0, sizeof it->out);
            if (it->code) continue;
            store_item si = {it->env, it->env_len, &it->delta, {0}, it->quarantine, 0,
                             false};
            memcpy(si.hash, it->hash, CRDT_HASH_BYTES);
            if (!it->quarantine) {
                /* Out of scope: kept in quarantine (not dropped), and the
                 * device's chain moves on past it. */
                rc = delta_scope_ok(t, &j->scope, &it->delta);
                if (rc == SYNC_ESCOPE) si.quarantine = STORE_Q_SCOPE;
                else if (rc) {
                    store_abort(t);
                    return rc;
                }
            }
            if ((rc = store_append(t, &si, now_ms, cfg->max_ahead_ms, &it->out))) {
                store_abort(t);
                return rc;
            }
        }
        /* The push is a sync: its last-sync time is durable with it. */
        if (j->n && (rc = store_device_seen(t, j->dev, now_ms)) && rc != STORE_ENOTFOUND) {
            store_abort(t);
            return rc;
        }
    }
    return store_commit(t);
}

int sync_jobs_commit(store *st, const sync_config *cfg, sync_job *jobs, uint64_t now_ms,
                     char (**touched)[CRDT_RECID_MAX + 1], size_t *n_touched)
{
    size_t cap = 0;
    int rc;
    *touched = NULL;
    *n_touched = 0;
    for (;;) {
        rc = commit_once(st, cfg, jobs, now_ms);
        if (rc != STORE_EMAPFULL) break;
        if ((rc = store_grow(st))) break; /* at the maximum: retryable error */
    }
    for (sync_job *j = jobs; j; j = j->next) {
        if (j->commit_rc) continue; /* keeps its verification error */
        j->commit_rc = rc;
        if (rc) continue;
        for (uint32_t i = 0; i < j->n; i++)
            if (j->items[i].out.result == STORE_APPLIED &&
                add_touched(touched, n_touched, &cap, j->items[i].out.household))
                break; /* out of memory only costs live wake-ups */
    }
    touched_unique(*touched, n_touched);
    return rc;
}
