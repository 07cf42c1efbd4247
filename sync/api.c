/*
 * api.c — TEMPORARY placeholder so the tree builds while the staff API is
 * being written (issue #7).  Every /api/ route answers 503 with a message
 * saying so; no session is ever valid.  Replaced by the real implementation.
 */
#include "sync.h"

#include <stdlib.h>
#include <string.h>

struct sync_api {
    store *st;
};

sync_api *sync_api_new(store *st, const sync_config *cfg)
{
    (void)cfg;
    sync_api *a = calloc(1, sizeof *a);
    if (a) a->st = st;
    return a;
}

void sync_api_free(sync_api *api) { free(api); }

int sync_api_handle(sync_api *api, const sync_http_req *req, uint64_t now_ms,
                    sync_http_resp *resp)
{
    static const char msg[] = "{\"error\":\"the staff API is not available in this build yet\"}";
    (void)api;
    (void)req;
    (void)now_ms;
    resp->status = 503;
    crdt_buf_append(&resp->body, msg, sizeof msg - 1);
    return 0;
}

bool sync_api_session_ok(sync_api *api, const char *cookie, uint64_t now_ms)
{
    (void)api;
    (void)cookie;
    (void)now_ms;
    return false;
}
