/*
 * sim.h — doorstep-sim as a library: a synthetic street of volunteers'
 * phones (the device library) against a running doorstepd, and the check
 * that everything converged.  main.c is the command; tests/device/ drives
 * the same functions against an in-process server.
 *
 * The simulator acts as an administrator through the server's store (the
 * `store *` passed in): it creates enrollment tokens, assigns the station
 * device's scope, and reads the delta log, chain heads and merged records
 * for the check.  Every record is created and edited through devices, so
 * everything on the server is a signed delta.
 */
#ifndef DOORSTEP_SIM_H
#define DOORSTEP_SIM_H

#include <stdio.h>

#include "doorstep_device.h"
#include "store.h"

typedef struct sim_opts {
    const char *server;        /* ws://HOST:PORT */
    const char *schema;        /* schema JSON (the server's) */
    const char *devices_dir;   /* device stores live here (reused if it holds a street) */
    uint32_t volunteers;       /* 300 */
    uint32_t households;       /* 7000 */
    uint32_t communities;      /* 22 (fewer for small streets) */
    uint32_t days;             /* visit days (3) */
    uint64_t seed;
    uint32_t threads;          /* devices syncing at once (64) */
    FILE *log;                 /* progress lines (NULL: quiet) */
    uint64_t test_skip_sseq;   /* check only: pretend the server lost this delta */
    const char *prefix;        /* before every record id and community code (NULL: none);
                                * at most SIM_PREFIX_MAX letters and digits */
} sim_opts;

#define SIM_PREFIX_MAX 6

typedef struct sim_result {
    bool converged;
    uint64_t devices;
    uint64_t deltas;           /* deltas made by the simulated devices (all runs) */
    uint64_t deltas_run;       /* ... in this run */
    uint64_t conflicts;        /* mv field instances with more than one distinct value
                                * (crdt_field_conflict) */
    uint64_t revoked;          /* devices the station revoked (not checked for views) */
    uint64_t handed_in;        /* of their deltas: kept in quarantine for review */
    uint64_t server_deltas;    /* envelopes in the server log */
    double seed_s, days_s, converge_s;
    char why[512];             /* first problem, if not converged */
} sim_result;

/* Fill in defaults for zero fields. */
void sim_opts_defaults(sim_opts *o);

/* Build (or reuse) the street, run the visit days, sync, check.  Returns 0
 * when the run completed (converged or not: see r->converged), or a
 * negative code when it could not run (message in r->why). */
int sim_run(store *st, const sim_opts *o, sim_result *r);

/* For devices the station revoked: every delta each one signed is in the
 * server's chain, in quarantine or still in its outbox (r->revoked and
 * r->handed_in count them; r->why says what is missing).  0 or an error. */
int sim_check_revoked(store *st, dsd *const *devs, size_t n, sim_result *r);

/* Create a one-time enrollment token for volunteer with scope (household
 * ids or "community/grid"), valid for a day.  0 or a store error. */
int sim_token(store *st, const char *volunteer, const char *const *scope, size_t n,
              char text[STORE_TOKEN_TEXT_LEN + 1]);

/*
 * sim_check — the convergence check for devices devs[0..n): each device's
 * outbox is empty and nothing was rejected; the server's chain head for the
 * device equals the device's (seq, hash); the server log holds exactly seq
 * deltas of the device (each once); every record in the device's scope on
 * the server equals the device's copy byte for byte, and the device holds
 * nothing else.  skip_sseq (tests) makes the check read the log as if the
 * server had lost that delta.  Fills r (converged, deltas, conflicts,
 * server_deltas, why).  Returns 0 or a store error.
 */
int sim_check(store *st, dsd *const *devs, size_t n, uint64_t skip_sseq, sim_result *r);

#endif
