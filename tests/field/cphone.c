/*
 * cphone.c — a phone built on the C device library, for the field app's
 * browser test (tests/e2e/field.mjs), so that a JavaScript phone and a C one
 * edit the same records and their bytes can be compared.
 *
 *   field_cphone DIR SCHEMA enroll URL TOKEN
 *   field_cphone DIR SCHEMA set KIND ID FIELD VALUE      (one signed delta, offline)
 *   field_cphone DIR SCHEMA sync URL
 *   field_cphone DIR SCHEMA record KIND ID               (prints the canonical bytes in hex)
 *
 * Exit 0 on success; 1 with the library's message on stderr otherwise.
 */
#include "doorstep_device.h"

#include <stdio.h>
#include <string.h>

static int fail(dsd *h, int rc, const char *what)
{
    fprintf(stderr, "field_cphone: %s: %s (%d) %s\n", what, dsd_strerror(rc), rc, h ? dsd_errmsg(h) : "");
    dsd_close(h);
    return 1;
}

int main(int argc, char **argv)
{
    char err[256] = "";
    dsd *h = NULL;
    int rc;
    if (argc < 4) {
        fprintf(stderr, "usage: field_cphone DIR SCHEMA enroll URL TOKEN | set KIND ID FIELD VALUE | "
                        "sync URL | record KIND ID\n");
        return 2;
    }
    if (dsd_global_init()) return 1;
    if ((rc = dsd_open(argv[1], argv[2], &h, err, sizeof err))) {
        fprintf(stderr, "field_cphone: open: %s\n", err);
        return 1;
    }
    const char *cmd = argv[3];
    if (!strcmp(cmd, "enroll") && argc == 6) {
        if ((rc = dsd_enroll(h, argv[4], argv[5]))) return fail(h, rc, "enroll");
    } else if (!strcmp(cmd, "set") && argc == 8) {
        if ((rc = dsd_set(h, argv[4], argv[5], argv[6], NULL, argv[7]))) return fail(h, rc, "set");
    } else if (!strcmp(cmd, "sync") && argc == 5) {
        if ((rc = dsd_sync(h, argv[4], NULL, NULL))) return fail(h, rc, "sync");
    } else if (!strcmp(cmd, "record") && argc == 6) {
        uint8_t *p = NULL;
        size_t n = 0;
        if ((rc = dsd_record_get(h, argv[4], argv[5], &p, &n))) return fail(h, rc, "record");
        for (size_t i = 0; i < n; i++) printf("%02x", p[i]);
        printf("\n");
        dsd_free(p);
    } else {
        fprintf(stderr, "field_cphone: bad command or arguments\n");
        dsd_close(h);
        return 2;
    }
    dsd_close(h);
    return 0;
}
