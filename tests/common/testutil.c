/*
 * testutil.c — seeded PRNG, hex and file helpers for tests (see testutil.h).
 */
#include "testutil.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t tu_seed(const char *test_name)
{
    const char *env = getenv("DOORSTEP_SEED");
    uint64_t seed;
    if (env && *env) {
        seed = strtoull(env, NULL, 0);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^
                     ((uint64_t)getpid() << 32);
        seed = splitmix(&x);
    }
    fprintf(stderr, "%s: seed: %llu (replay with DOORSTEP_SEED=%llu)\n",
            test_name ? test_name : "test", (unsigned long long)seed,
            (unsigned long long)seed);
    return seed;
}

void tu_rng_init(tu_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix(&x);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t tu_next(tu_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = rotl(s[3], 45);
    return result;
}

uint64_t tu_below(tu_rng *r, uint64_t n)
{
    /* Lemire's nearly-divisionless method is overkill here; modulo bias is
     * negligible for the small n tests use. */
    return n ? tu_next(r) % n : 0;
}

bool tu_long_mode(void)
{
    const char *e = getenv("DOORSTEP_LONG");
    return e && *e && strcmp(e, "0") != 0;
}

bool tu_memcheck(void)
{
    const char *e = getenv("DOORSTEP_MEMCHECK");
    return e && *e && strcmp(e, "0") != 0;
}

uint64_t tu_scaled(uint64_t n)
{
    if (!tu_memcheck()) return n;
    return n / 20 ? n / 20 : 1;
}

void tu_hex(const uint8_t *p, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[p[i] >> 4];
        out[2 * i + 1] = d[p[i] & 15];
    }
    out[2 * n] = 0;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

long tu_unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = 0;
    while (*hex) {
        if (*hex == ' ' || *hex == '\n' || *hex == '\t') { hex++; continue; }
        int hi = hexval(hex[0]);
        int lo = hex[1] ? hexval(hex[1]) : -1;
        if (hi < 0 || lo < 0 || n >= cap) return -1;
        out[n++] = (uint8_t)(hi << 4 | lo);
        hex += 2;
    }
    return (long)n;
}

char *tu_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return NULL; }
    long sz = ftell(f);
    if (sz < 0) { fclose(f); return NULL; }
    rewind(f);
    char *buf = malloc((size_t)sz + 1);
    if (!buf) { fclose(f); return NULL; }
    if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) { free(buf); fclose(f); return NULL; }
    fclose(f);
    buf[sz] = 0;
    if (len) *len = (size_t)sz;
    return buf;
}

#include "crdt.h"

static char *dupstr(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static void set_enum(crdt_vspec *v, const char *const *vals, uint32_t n)
{
    v->vtype = CRDT_VT_ENUM;
    v->enum_values = calloc(n, sizeof(char *));
    for (uint32_t i = 0; i < n; i++) v->enum_values[i] = dupstr(vals[i]);
    v->n_enum = n;
}

struct crdt_schema *tu_test_schema(void)
{
    crdt_schema *s = calloc(1, sizeof(*s));
    strcpy(s->name, "test");
    s->version = 1;
    s->n_kinds = 1;
    s->kinds = calloc(1, sizeof(crdt_kspec));
    crdt_kspec *k = &s->kinds[0];
    strcpy(k->name, "t");
    k->n_fields = 7;
    k->fields = calloc(7, sizeof(crdt_fspec));
    crdt_fspec *f = k->fields;
    /* Kept sorted by nothing in particular: lookups are by name. */
    strcpy(f[0].name, "lw"); f[0].type = CRDT_F_LWW;
    f[0].v.vtype = CRDT_VT_TEXT; f[0].v.max_len = 200;
    strcpy(f[1].name, "mv"); f[1].type = CRDT_F_MV;
    f[1].v.vtype = CRDT_VT_TEXT; f[1].v.max_len = 200;
    strcpy(f[2].name, "pay"); f[2].type = CRDT_F_MV;
    static const char *const pay[] = {"unpaid", "paid", "proxy"};
    set_enum(&f[2].v, pay, 3);
    f[2].keyed = true; f[2].key.vtype = CRDT_VT_INT; f[2].key.min = 2000; f[2].key.max = 2100;
    strcpy(f[3].name, "tags"); f[3].type = CRDT_F_SET;
    f[3].v.vtype = CRDT_VT_TEXT; f[3].v.max_len = 32;
    strcpy(f[4].name, "visits"); f[4].type = CRDT_F_LOG;
    f[4].v.vtype = CRDT_VT_ENTRY;
    f[4].n_members = 2;
    f[4].members = calloc(2, sizeof(crdt_member));
    strcpy(f[4].members[0].name, "d"); f[4].members[0].required = true;
    f[4].members[0].v.vtype = CRDT_VT_DATE;
    strcpy(f[4].members[1].name, "n");
    f[4].members[1].v.vtype = CRDT_VT_TEXT; f[4].members[1].v.max_len = 200;
    strcpy(f[5].name, "cnt"); f[5].type = CRDT_F_COUNTER;
    f[5].v.vtype = CRDT_VT_INT; f[5].v.min = -1000000; f[5].v.max = 1000000;
    f[5].inc_max = 1000000;
    strcpy(f[6].name, "st"); f[6].type = CRDT_F_STAGE;
    static const char *const st[] = {"a", "b", "c"};
    set_enum(&f[6].v, st, 3);
    return s;
}
