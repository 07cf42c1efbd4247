/*
 * test_schema.c — the schema file format (wire/schema_load.c), the schema
 * consistency check, and crdt_schema_check_delta (crdt/schema.c).
 *
 *   - the default schema crdt/schema/yibao.json loads, validates, and uses
 *     every CRDT type;
 *   - a catalogue of bad schema files, each refused with the expected code
 *     and a message naming the source and the path of the mistake;
 *   - crdt_schema_check_delta on hand-built deltas for every op/type
 *     combination, good and bad, each with its expected code and op index;
 *   - one delta through the real codec (encode, decode, check).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "wire.h"
#include "testutil.h"

#define YIBAO DOORSTEP_SOURCE_DIR "/crdt/schema/yibao.json"

static crdt_schema *yibao;

static int setup(void **state)
{
    char err[512];
    (void)state;
    if (wire_schema_load_file(YIBAO, &yibao, err, sizeof err) != 0) {
        fprintf(stderr, "cannot load %s: %s\n", YIBAO, err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    crdt_schema_free(yibao);
    return 0;
}

/* ---- the default schema ------------------------------------------------------ */

static const crdt_fspec *field(const char *kind, const char *name)
{
    const crdt_kspec *k = crdt_schema_kind(yibao, kind, strlen(kind));
    assert_non_null(k);
    return crdt_schema_field(k, name, strlen(name));
}

static void test_yibao_loads(void **state)
{
    (void)state;
    char err[256];
    assert_string_equal(yibao->name, "yibao-household-visit");
    assert_int_equal(yibao->version, 1);
    assert_int_equal(yibao->n_kinds, 2);
    assert_int_equal(crdt_schema_validate(yibao, err, sizeof err), 0);
    assert_string_equal(err, "");
    assert_null(crdt_schema_kind(yibao, "animal", 6));
    assert_null(crdt_schema_kind(yibao, "person", 5)); /* length-counted */
    assert_non_null(crdt_schema_kind(yibao, "personX", 6));

    /* Every CRDT type is used, and every field has a doc line. */
    bool used[7] = {false};
    for (uint32_t k = 0; k < yibao->n_kinds; k++)
        for (uint32_t f = 0; f < yibao->kinds[k].n_fields; f++) {
            used[yibao->kinds[k].fields[f].type] = true;
            assert_non_null(yibao->kinds[k].fields[f].doc);
        }
    for (int t = CRDT_F_LWW; t <= CRDT_F_STAGE; t++) assert_true(used[t]);

    const crdt_fspec *f = field("person", "id_number");
    assert_non_null(f);
    assert_int_equal(f->type, CRDT_F_MV);
    assert_int_equal(f->v.vtype, CRDT_VT_IDNUM);

    f = field("person", "payment");
    assert_int_equal(f->type, CRDT_F_MV);
    assert_true(f->keyed);
    assert_int_equal(f->key.vtype, CRDT_VT_INT);
    assert_true(f->key.min == 2000 && f->key.max == 2100);
    assert_true(crdt_vspec_enum_index(&f->v, "已缴费", strlen("已缴费")) >= 0);
    assert_true(crdt_vspec_enum_index(&f->v, "代缴", strlen("代缴")) >= 0);

    f = field("person", "review");
    assert_int_equal(f->type, CRDT_F_STAGE);
    assert_int_equal(f->v.n_enum, 3);
    assert_int_equal(crdt_vspec_enum_index(&f->v, "待初审", strlen("待初审")), 0);
    assert_int_equal(crdt_vspec_enum_index(&f->v, "社区已初审", strlen("社区已初审")), 1);
    assert_int_equal(crdt_vspec_enum_index(&f->v, "街道已办结", strlen("街道已办结")), 2);
    assert_int_equal(crdt_vspec_enum_index(&f->v, "街道", strlen("街道")), -1);

    f = field("person", "tags");
    assert_int_equal(f->type, CRDT_F_SET);
    static const char *const tags[] = {"特困", "低保", "返贫致贫", "易返贫致贫", "灵活就业",
                                       "外出务工", "60岁以上无收入"};
    for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++)
        assert_true(crdt_vspec_enum_index(&f->v, tags[i], strlen(tags[i])) >= 0);

    f = field("person", "visits");
    assert_int_equal(f->type, CRDT_F_LOG);
    assert_int_equal(f->v.vtype, CRDT_VT_ENTRY);
    assert_true(f->n_members >= 4);
    assert_string_equal(f->members[0].name, "date");
    assert_true(f->members[0].required);

    f = field("person", "errands_done");
    assert_int_equal(f->type, CRDT_F_COUNTER);
    assert_true(f->inc_max == 100);

    f = field("household", "head");
    assert_int_equal(f->v.vtype, CRDT_VT_REF);
    assert_string_equal(f->v.ref_kind, "person");
    f = field("person", "household");
    assert_string_equal(f->v.ref_kind, "household");
    f = field("person", "note");
    assert_int_equal(f->v.max_len, 1000);
    f = field("person", "phone");
    assert_int_equal(f->type, CRDT_F_LWW);
    assert_int_equal(f->v.vtype, CRDT_VT_PHONE);
}

/* ---- files and syntax --------------------------------------------------------- */

static void test_file_errors(void **state)
{
    (void)state;
    crdt_schema *s = (crdt_schema *)1;
    char err[512];
    assert_int_equal(wire_schema_load_file("/nonexistent/dir/x.json", &s, err, sizeof err),
                     WIRE_EIO);
    assert_null(s);
    assert_non_null(strstr(err, "/nonexistent/dir/x.json"));

    static const char bad[] = "{\"name\": \"x\",\n  \"version\": 1,,\n}";
    s = (crdt_schema *)1;
    assert_int_equal(wire_schema_load_buffer(bad, strlen(bad), "bad.json", &s, err, sizeof err),
                     WIRE_EJSON);
    assert_null(s);
    assert_non_null(strstr(err, "bad.json:2:"));

    static const char dup[] = "{\"name\": \"x\", \"version\": 1, \"name\": \"y\", \"kinds\": []}";
    assert_int_equal(wire_schema_load_buffer(dup, strlen(dup), "dup.json", &s, err, sizeof err),
                     WIRE_EJSON);
    assert_non_null(strstr(err, "dup.json:1:"));
    assert_non_null(strstr(err, "duplicate"));

    assert_int_equal(wire_schema_load_buffer("", 0, "empty.json", &s, err, sizeof err),
                     WIRE_EJSON);
    assert_non_null(strstr(err, "empty.json:"));
    /* err may be absent. */
    assert_int_equal(wire_schema_load_buffer("[", 1, "x", &s, NULL, 0), WIRE_EJSON);
    assert_int_equal(wire_schema_load_buffer("{}", 2, "x", NULL, err, sizeof err), CRDT_EINVAL);

    /* A short err buffer is truncated, still NUL-terminated. */
    char small[8];
    assert_int_equal(wire_schema_load_buffer("[]", 2, "long-source-name.json", &s, small,
                                             sizeof small), CRDT_ESCHEMA);
    assert_int_equal(strlen(small), sizeof small - 1);

    /* The file loader and the buffer loader agree. */
    size_t len;
    char *text = tu_read_file(YIBAO, &len);
    assert_non_null(text);
    assert_int_equal(wire_schema_load_buffer(text, len, "yibao.json", &s, err, sizeof err), 0);
    assert_non_null(s);
    assert_int_equal(s->n_kinds, yibao->n_kinds);
    crdt_schema_free(s);
    free(text);
}

/* ---- the catalogue of bad schemas ----------------------------------------------- */

/* A one-kind schema "person" with a good text field "a" and then `extra`. */
static int load_with_field(const char *extra, char *err, size_t errlen)
{
    char json[4096];
    crdt_schema *s = (crdt_schema *)1;
    snprintf(json, sizeof json,
             "{\"name\":\"t\",\"version\":1,\"kinds\":[{\"name\":\"household\",\"fields\":"
             "[{\"name\":\"a\",\"crdt\":\"lww\",\"type\":\"text\"}]},"
             "{\"name\":\"person\",\"fields\":[{\"name\":\"a\",\"crdt\":\"lww\",\"type\":\"text\"}%s%s]}]}",
             extra[0] ? "," : "", extra);
    int rc = wire_schema_load_buffer(json, strlen(json), "t.json", &s, err, errlen);
    if (rc == 0) crdt_schema_free(s);
    else assert_null(s);
    return rc;
}

static void test_bad_fields(void **state)
{
    (void)state;
    static const struct { const char *json, *want; } c[] = {
        {"{\"name\":\"id_number\",\"crdt\":\"mv\",\"type\":\"idnr\"}",
         "t.json: kinds[1](person).fields[1](id_number).type: unknown type 'idnr' (expected text|int|bool|date|enum|idnum|phone|ref|entry)"},
        {"{\"name\":\"x\",\"crdt\":\"lwww\",\"type\":\"text\"}",
         "kinds[1](person).fields[1](x).crdt: unknown CRDT type 'lwww' (expected lww|mv|set|log|counter|stage)"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"text\",\"max_lenn\":5}",
         "kinds[1](person).fields[1](x): unknown attribute 'max_lenn'"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"int\",\"max_len\":5}",
         "fields[1](x).max_len: applies only to type text (this is int)"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"text\",\"min\":5}",
         "fields[1](x).min: applies only to type int"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"text\",\"values\":[\"a\"]}",
         "fields[1](x).values: applies only to type enum"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"text\",\"ref\":\"person\"}",
         "fields[1](x).ref: applies only to type ref"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"enum\"}",
         "fields[1](x).values: missing (required for type enum)"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"enum\",\"values\":[]}",
         "fields[1](x).values: must not be empty"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"enum\",\"values\":\"a\"}",
         "fields[1](x).values: expected an array"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"enum\",\"values\":[\"a\",1]}",
         "fields[1](x).values[1]: expected a string"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"enum\",\"values\":[\"低保\",\"特困\",\"低保\"]}",
         "t.json: person.x: duplicate enum value '低保'"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"enum\",\"values\":[\"\"]}",
         "person.x: enum value 0 is empty"},
        {"{\"name\":\"x\",\"crdt\":\"stage\",\"type\":\"text\"}",
         "person.x: stage fields must have type enum (has text)"},
        {"{\"name\":\"x\",\"crdt\":\"stage\"}",
         "fields[1](x).values: missing (required for type enum)"},
        {"{\"name\":\"x\",\"crdt\":\"log\",\"type\":\"entry\"}",
         "fields[1](x).members: missing (required for type entry)"},
        {"{\"name\":\"x\",\"crdt\":\"log\",\"type\":\"entry\",\"members\":[]}",
         "fields[1](x).members: must not be empty"},
        {"{\"name\":\"x\",\"crdt\":\"log\",\"type\":\"text\"}",
         "person.x: log fields must have type entry (has text)"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"entry\",\"members\":[{\"name\":\"d\",\"type\":\"date\"}]}",
         "person.x: type entry is only for log fields (this is lww)"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"text\",\"members\":[{\"name\":\"d\",\"type\":\"date\"}]}",
         "fields[1](x).members: applies only to type entry"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"enum\",\"values\":[\"a\"],\"required\":true}",
         "fields[1](x).required: applies only to text values of lww and mv fields"},
        {"{\"name\":\"x\",\"crdt\":\"set\",\"type\":\"text\",\"required\":true}",
         "fields[1](x).required: applies only to text values of lww and mv fields"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"text\",\"required\":1}",
         "fields[1](x).required: expected true or false"},
        {"{\"name\":\"x\",\"crdt\":\"log\",\"members\":[{\"name\":\"d\",\"type\":\"date\",\"requird\":true}]}",
         "fields[1](x).members[0](d): unknown attribute 'requird'"},
        {"{\"name\":\"x\",\"crdt\":\"log\",\"members\":[{\"name\":\"d\",\"type\":\"date\",\"required\":1}]}",
         "fields[1](x).members[0](d).required: expected true or false"},
        {"{\"name\":\"x\",\"crdt\":\"log\",\"members\":[{\"name\":\"d\",\"type\":\"entry\"}]}",
         "members[0](d).type: an entry member cannot itself be an entry"},
        {"{\"name\":\"x\",\"crdt\":\"log\",\"members\":[{\"name\":\"d\",\"type\":\"date\"},{\"name\":\"d\",\"type\":\"text\"}]}",
         "person.x: duplicate member 'd'"},
        {"{\"name\":\"x\",\"crdt\":\"log\",\"members\":[{\"name\":\"D\",\"type\":\"date\"}]}",
         "person.x: member name 'D' must be 1..31 bytes of [a-z0-9_]"},
        {"{\"name\":\"x\",\"crdt\":\"log\",\"members\":[{\"name\":\"d\",\"type\":\"ref\",\"ref\":\"nosuch\"}]}",
         "person.x.d: ref to unknown kind 'nosuch'"},
        {"{\"name\":\"x\",\"crdt\":\"log\",\"members\":[{\"type\":\"date\"}]}",
         "fields[1](x).members[0].name: missing (required)"},
        {"{\"name\":\"x\",\"crdt\":\"set\",\"type\":\"text\",\"key\":{\"type\":\"int\",\"min\":1,\"max\":2}}",
         "fields[1](x).key: only lww and mv fields can be keyed (this is set)"},
        {"{\"name\":\"x\",\"crdt\":\"mv\",\"type\":\"text\",\"key\":{\"type\":\"text\"}}",
         "fields[1](x).key.type: key type must be int or enum (not text)"},
        {"{\"name\":\"x\",\"crdt\":\"mv\",\"type\":\"text\",\"key\":{\"type\":\"int\",\"min\":2100,\"max\":2000}}",
         "person.x.key: min 2100 is greater than max 2000"},
        {"{\"name\":\"x\",\"crdt\":\"mv\",\"type\":\"text\",\"key\":{\"type\":\"int\",\"max_len\":3}}",
         "fields[1](x).key: unknown attribute 'max_len'"},
        {"{\"name\":\"x\",\"crdt\":\"mv\",\"type\":\"text\",\"key\":{\"type\":\"enum\",\"values\":[\"a\",\"a\"]}}",
         "person.x.key: duplicate enum value 'a'"},
        {"{\"name\":\"x\",\"crdt\":\"mv\",\"type\":\"text\",\"key\":2026}",
         "fields[1](x).key: expected an object"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"ref\",\"ref\":\"houshold\"}",
         "person.x: ref to unknown kind 'houshold'"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"ref\"}",
         "fields[1](x).ref: missing (required for type ref"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"int\",\"min\":5,\"max\":1}",
         "person.x: min 5 is greater than max 1"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"int\",\"min\":\"5\"}",
         "fields[1](x).min: expected an integer"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"text\",\"max_len\":2.5}",
         "fields[1](x).max_len: expected an integer"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"text\",\"max_len\":0}",
         "fields[1](x).max_len: 0 out of range (1..4096)"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"text\",\"max_len\":5000}",
         "fields[1](x).max_len: 5000 out of range"},
        {"{\"name\":\"x\",\"crdt\":\"counter\",\"inc_max\":0}",
         "fields[1](x).inc_max: 0 out of range"},
        {"{\"name\":\"x\",\"crdt\":\"counter\",\"type\":\"text\"}",
         "person.x: counter fields must have type int (has text)"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"int\",\"inc_max\":5}",
         "fields[1](x).inc_max: applies only to counter fields (this is lww)"},
        {"{\"name\":\"x\",\"crdt\":\"lww\"}",
         "fields[1](x).type: missing (required for lww fields)"},
        {"{\"name\":\"x\",\"type\":\"text\"}",
         "fields[1](x).crdt: missing (required)"},
        {"{\"name\":\"x\",\"crdt\":5,\"type\":\"text\"}",
         "fields[1](x).crdt: expected a string"},
        {"{\"name\":\"a\",\"crdt\":\"lww\",\"type\":\"text\"}",
         "t.json: person.a: duplicate field"},
        {"{\"name\":\"Name\",\"crdt\":\"lww\",\"type\":\"text\"}",
         "person: field name 'Name' must be 1..31 bytes of [a-z0-9_]"},
        {"{\"name\":\"a-b\",\"crdt\":\"lww\",\"type\":\"text\"}",
         "person: field name 'a-b' must be"},
        {"{\"name\":\"abcdefghijabcdefghijabcdefghijab\",\"crdt\":\"lww\",\"type\":\"text\"}",
         "kinds[1](person).fields[1].name: 'abcdefghijabcdefghijabcdefghijab' must be 1..31 bytes"},
        {"{\"name\":\"\",\"crdt\":\"lww\",\"type\":\"text\"}",
         "kinds[1](person).fields[1].name: '' must be 1..31 bytes"},
        {"{\"crdt\":\"lww\",\"type\":\"text\"}",
         "kinds[1](person).fields[1].name: missing (required)"},
        {"5", "kinds[1](person).fields[1]: expected an object"},
        {"{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"text\",\"doc\":7}",
         "fields[1](x).doc: expected a string"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        char err[512];
        int rc = load_with_field(c[i].json, err, sizeof err);
        if (rc != CRDT_ESCHEMA) fail_msg("case %zu (%s): rc %d, err '%s'", i, c[i].json, rc, err);
        if (!strstr(err, c[i].want))
            fail_msg("case %zu: message\n  '%s'\nlacks\n  '%s'", i, err, c[i].want);
        if (strncmp(err, "t.json: ", 8) != 0) fail_msg("case %zu: no source in '%s'", i, err);
    }
    /* NUL characters never get past jansson (no JSON_ALLOW_NUL). */
    {
        char err[512];
        int rc = load_with_field("{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"enum\","
                                 "\"values\":[\"a\\u0000b\"]}", err, sizeof err);
        assert_int_equal(rc, WIRE_EJSON);
        assert_non_null(strstr(err, "t.json:1:"));
    }
    /* The good field variants all load. */
    static const char *const good[] = {
        "",
        "{\"name\":\"x\",\"crdt\":\"counter\"}",
        "{\"name\":\"x\",\"crdt\":\"stage\",\"values\":[\"a\",\"b\"]}",
        "{\"name\":\"x\",\"crdt\":\"log\",\"members\":[{\"name\":\"d\",\"type\":\"date\",\"required\":true,\"doc\":\"日期\"}]}",
        "{\"name\":\"x\",\"crdt\":\"mv\",\"type\":\"bool\",\"key\":{\"type\":\"enum\",\"values\":[\"a\",\"b\"]}}",
        "{\"name\":\"x\",\"crdt\":\"set\",\"type\":\"ref\",\"ref\":\"household\"}",
        "{\"name\":\"x\",\"crdt\":\"lww\",\"type\":\"int\",\"min\":-5,\"max\":-5}",
        "{\"name\":\"x_2\",\"crdt\":\"lww\",\"type\":\"text\",\"max_len\":4096,\"doc\":\"\"}",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char err[512];
        int rc = load_with_field(good[i], err, sizeof err);
        if (rc) fail_msg("good %zu (%s): rc %d, err '%s'", i, good[i], rc, err);
    }
}

static void test_bad_tops(void **state)
{
    (void)state;
    static const struct { const char *json, *want; } c[] = {
        {"[]", "t.json: the schema must be a JSON object"},
        {"{\"version\":1,\"kinds\":[]}", "t.json: name: missing (required)"},
        {"{\"name\":\"t\",\"kinds\":[]}", "t.json: version: missing (required)"},
        {"{\"name\":\"t\",\"version\":0,\"kinds\":[]}", "t.json: version: 0 out of range"},
        {"{\"name\":\"t\",\"version\":\"1\",\"kinds\":[]}", "t.json: version: expected an integer"},
        {"{\"name\":\"t\",\"version\":1}", "t.json: kinds: missing (required)"},
        {"{\"name\":\"t\",\"version\":1,\"kinds\":[]}", "t.json: kinds: must not be empty"},
        {"{\"name\":\"t\",\"version\":1,\"kinds\":{}}", "t.json: kinds: expected an array"},
        {"{\"name\":\"t\",\"version\":1,\"kind\":[]}",
         "t.json: unknown attribute 'kind' (expected name|version|kinds|doc)"},
        {"{\"name\":\"\",\"version\":1,\"kinds\":[]}", "t.json: name: must be 1..63 bytes"},
        {"{\"name\":\"yibao visit\",\"version\":1,\"kinds\":[{\"name\":\"k\",\"fields\":[{\"name\":\"a\",\"crdt\":\"lww\",\"type\":\"text\"}]}]}",
         "t.json: schema name 'yibao visit' must use only"},
        {"{\"name\":\"t\",\"version\":1,\"kinds\":[{\"name\":\"k\"}]}",
         "t.json: kinds[0](k).fields: missing (required)"},
        {"{\"name\":\"t\",\"version\":1,\"kinds\":[{\"name\":\"k\",\"fields\":[]}]}",
         "t.json: kinds[0](k).fields: must not be empty"},
        {"{\"name\":\"t\",\"version\":1,\"kinds\":[{\"name\":\"k\",\"fields\":[],\"fieldz\":1}]}",
         "t.json: kinds[0](k): unknown attribute 'fieldz' (expected name|fields|doc)"},
        {"{\"name\":\"t\",\"version\":1,\"kinds\":[{\"fields\":[]}]}",
         "t.json: kinds[0].name: missing (required)"},
        {"{\"name\":\"t\",\"version\":1,\"kinds\":[1]}", "t.json: kinds[0]: expected an object"},
        {"{\"name\":\"t\",\"version\":1,\"kinds\":[{\"name\":\"Person\",\"fields\":[{\"name\":\"a\",\"crdt\":\"lww\",\"type\":\"text\"}]}]}",
         "t.json: kind 'Person': name must be 1..31 bytes of [a-z0-9_]"},
        {"{\"name\":\"t\",\"version\":1,\"kinds\":[{\"name\":\"k\",\"fields\":[{\"name\":\"a\",\"crdt\":\"lww\",\"type\":\"text\"}]},"
         "{\"name\":\"k\",\"fields\":[{\"name\":\"a\",\"crdt\":\"lww\",\"type\":\"text\"}]}]}",
         "t.json: k: duplicate kind"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        char err[512];
        crdt_schema *s = (crdt_schema *)1;
        int rc = wire_schema_load_buffer(c[i].json, strlen(c[i].json), "t.json", &s, err,
                                         sizeof err);
        if (rc != CRDT_ESCHEMA) fail_msg("case %zu: rc %d, err '%s'", i, rc, err);
        assert_null(s);
        if (!strstr(err, c[i].want))
            fail_msg("case %zu: message\n  '%s'\nlacks\n  '%s'", i, err, c[i].want);
    }
}

/* ---- crdt_schema_validate on hand-built schemas ------------------------------- */

static void test_validate_direct(void **state)
{
    (void)state;
    char err[256];
    crdt_schema *s = tu_test_schema();
    assert_int_equal(crdt_schema_validate(s, err, sizeof err), 0);
    assert_int_equal(crdt_schema_validate(NULL, err, sizeof err), CRDT_EINVAL);
    crdt_fspec *f = s->kinds[0].fields;
    /* Keys on a set field. */
    f[3].keyed = true;
    f[3].key.vtype = CRDT_VT_INT;
    assert_int_equal(crdt_schema_validate(s, err, sizeof err), CRDT_ESCHEMA);
    assert_non_null(strstr(err, "t.tags: only lww and mv fields can be keyed"));
    f[3].keyed = false;
    /* A counter without inc_max. */
    int64_t im = f[5].inc_max;
    f[5].inc_max = 0;
    assert_int_equal(crdt_schema_validate(s, err, sizeof err), CRDT_ESCHEMA);
    assert_non_null(strstr(err, "t.cnt: counter inc_max must be > 0"));
    f[5].inc_max = im;
    /* A field name that is not NUL-terminated in its buffer. */
    char saved[CRDT_NAME_MAX];
    memcpy(saved, f[0].name, CRDT_NAME_MAX);
    memset(f[0].name, 'a', CRDT_NAME_MAX);
    assert_int_equal(crdt_schema_validate(s, err, sizeof err), CRDT_ESCHEMA);
    assert_non_null(strstr(err, "field name"));
    memcpy(f[0].name, saved, CRDT_NAME_MAX);
    /* Unknown CRDT type code, unknown value type code. */
    f[0].type = 9;
    assert_int_equal(crdt_schema_validate(s, err, sizeof err), CRDT_ESCHEMA);
    assert_non_null(strstr(err, "t.lw: unknown CRDT type 9"));
    f[0].type = CRDT_F_LWW;
    f[0].v.vtype = 42;
    assert_int_equal(crdt_schema_validate(s, err, sizeof err), CRDT_ESCHEMA);
    assert_non_null(strstr(err, "t.lw: unknown value type 42"));
    f[0].v.vtype = CRDT_VT_TEXT;
    /* Version 0; errlen 0 writes nothing. */
    s->version = 0;
    err[0] = 'q';
    assert_int_equal(crdt_schema_validate(s, err, 0), CRDT_ESCHEMA);
    assert_int_equal(err[0], 'q');
    s->version = 1;
    assert_int_equal(crdt_schema_validate(s, NULL, 0), 0);
    crdt_schema_free(s);
    crdt_schema_free(NULL);
}

/* ---- crdt_schema_check_delta ------------------------------------------------- */

enum { V_NONE, V_STR, V_INT, V_NIL, V_BOOL, V_MAP, V_HEX };

typedef struct dcase {
    const char *kind;
    int code;
    const char *field;
    int vt;            /* value kind */
    const char *s;     /* V_STR text, V_MAP spec "k=v;k=#12;k=?t", V_HEX bytes */
    int64_t i;
    int kt;            /* key kind: V_NONE, V_STR, V_INT, V_HEX */
    const char *ks;
    int64_t ki;
    int nobs;          /* obs: dots (1,1), (2,5), ...; -1 = one bad dot (0,1), -2 = (1,0) */
    int want;
} dcase;

static crdt_blob make_val(crdt_buf *b, int vt, const char *s, int64_t i)
{
    crdt_buf_reset(b);
    switch (vt) {
    case V_NONE: return (crdt_blob){NULL, 0};
    case V_STR: assert_int_equal(crdt_val_put_str(b, s, strlen(s)), 0); break;
    case V_INT: assert_int_equal(crdt_val_put_int(b, i), 0); break;
    case V_NIL: assert_int_equal(crdt_val_put_nil(b), 0); break;
    case V_BOOL: assert_int_equal(crdt_val_put_bool(b, i != 0), 0); break;
    case V_HEX: {
        uint8_t raw[256];
        long n = tu_unhex(s, raw, sizeof raw);
        assert_true(n >= 0);
        assert_int_equal(crdt_buf_append(b, raw, (size_t)n), 0);
        break;
    }
    case V_MAP: {
        /* "k=v;k=#12;k=?t" : str, int, bool members. */
        char spec[1024], *save = NULL;
        const char *keys[CRDT_VAL_MAP_MAX];
        crdt_scalar vals[CRDT_VAL_MAP_MAX];
        uint32_t n = 0;
        snprintf(spec, sizeof spec, "%s", s);
        for (char *tok = strtok_r(spec, ";", &save); tok; tok = strtok_r(NULL, ";", &save)) {
            char *eq = strchr(tok, '=');
            assert_non_null(eq);
            *eq = 0;
            keys[n] = tok;
            const char *v = eq + 1;
            if (v[0] == '#') vals[n] = (crdt_scalar){.t = CRDT_V_INT, .i = strtoll(v + 1, NULL, 10)};
            else if (v[0] == '?') vals[n] = (crdt_scalar){.t = CRDT_V_BOOL, .b = v[1] == 't'};
            else vals[n] = (crdt_scalar){.t = CRDT_V_STR, .s = v, .len = (uint32_t)strlen(v)};
            n++;
        }
        assert_int_equal(crdt_val_put_map(b, keys, vals, n), 0);
        break;
    }
    default: fail();
    }
    return (crdt_blob){b->p, (uint32_t)b->n};
}

static int run_case(const dcase *c, int *err_op)
{
    crdt_buf vb = {0}, kb = {0};
    crdt_dot obs[4] = {{1, 1}, {2, 5}, {3, 7}, {9, 100}};
    crdt_op op = {0};
    op.code = (uint8_t)c->code;
    op.field = c->field;
    op.field_len = c->field ? (uint32_t)strlen(c->field) : 0;
    op.val = make_val(&vb, c->vt, c->s, c->i);
    op.key = make_val(&kb, c->kt, c->ks, c->ki);
    if (c->nobs == -1) { obs[0].dev = 0; op.n_obs = 1; }
    else if (c->nobs == -2) { obs[0].seq = 0; op.n_obs = 1; }
    else op.n_obs = (uint32_t)c->nobs;
    op.obs = obs;
    crdt_delta d = {.dev = 1, .epoch = 1, .seq = 1, .hlc = CRDT_HLC_MAKE(1700000000000ull, 0),
                    .kind = c->kind, .kind_len = (uint32_t)strlen(c->kind),
                    .id = "p-0001", .id_len = 6, .n_ops = 1, .ops = &op};
    int rc = crdt_schema_check_delta(yibao, &d, err_op);
    crdt_buf_free(&vb);
    crdt_buf_free(&kb);
    return rc;
}

#define P "person"
#define H "household"
#define LONG201 "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789" \
                "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789x"
#define ID_OK "11010519491231002X"
#define ID_BAD "110105194912310021"

static void test_check_delta_table(void **state)
{
    (void)state;
    static const dcase c[] = {
        /* lww text */
        {P, CRDT_OP_SET, "note", V_STR, "家里有老人需要上门", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_SET, "note", V_STR, "line one\nline\ttwo", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_SET, "note", V_STR, "", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_SET, "note", V_STR, "bell\x07", 0, V_NONE, 0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_SET, "note", V_STR, "cr\r", 0, V_NONE, 0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_SET, "note", V_STR, "del\x7f", 0, V_NONE, 0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_SET, "note", V_STR, "c1\xc2\x85", 0, V_NONE, 0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_SET, "note", V_STR, "bad\xff", 0, V_NONE, 0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_SET, "note", V_INT, NULL, 5, V_NONE, 0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_SET, "note", V_NIL, NULL, 0, V_NONE, 0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_SET, "note", V_MAP, "a=b", 0, V_NONE, 0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_SET, "note", V_NONE, NULL, 0, V_NONE, 0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_SET, "note", V_STR, "x", 0, V_NONE, 0, 0, 1, CRDT_EOBS},
        {P, CRDT_OP_SET, "note", V_STR, "x", 0, V_INT, 0, 2026, 0, CRDT_EKEY},
        {P, CRDT_OP_ADD, "note", V_STR, "x", 0, V_NONE, 0, 0, 0, CRDT_EOP},
        {P, CRDT_OP_APP, "note", V_STR, "x", 0, V_NONE, 0, 0, 0, CRDT_EOP},
        {H, CRDT_OP_SET, "address", V_STR, LONG201, 0, V_NONE, 0, 0, 0, CRDT_ETEXT},
        {H, CRDT_OP_SET, "address", V_STR, "幸福路 12 号 3 单元 501", 0, V_NONE, 0, 0, 0, 0},
        {H, CRDT_OP_SET, "community", V_STR, "C07", 0, V_NONE, 0, 0, 0, 0},
        /* lww phone, ref, enum */
        {P, CRDT_OP_SET, "phone", V_STR, "13800138000", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_SET, "phone", V_STR, "0755-12345678", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_SET, "phone", V_STR, "12345", 0, V_NONE, 0, 0, 0, CRDT_EPHONE},
        {P, CRDT_OP_SET, "phone", V_INT, NULL, 13800138000, V_NONE, 0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_SET, "household", V_STR, "h-C07.0012_a", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_SET, "household", V_STR, "bad id!", 0, V_NONE, 0, 0, 0, CRDT_ERECID},
        {P, CRDT_OP_SET, "household", V_STR, "", 0, V_NONE, 0, 0, 0, CRDT_ERECID},
        {P, CRDT_OP_SET, "household", V_STR,
         "h0123456789012345678901234567890123456789012345678901234567890123", 0, V_NONE, 0, 0, 0,
         CRDT_ERECID}, /* 65 bytes */
        {H, CRDT_OP_SET, "head", V_STR, "p-0001", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_SET, "relation", V_STR, "配偶", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_SET, "relation", V_STR, "朋友", 0, V_NONE, 0, 0, 0, CRDT_EENUM},
        {P, CRDT_OP_SET, "relation", V_BOOL, NULL, 1, V_NONE, 0, 0, 0, CRDT_EVALUE},
        /* "required" text (name, address, community, grid): never blank; a
         * note may be emptied */
        {P, CRDT_OP_SET, "name", V_STR, "", 0, V_NONE, 0, 0, 0, CRDT_EBLANK},
        {P, CRDT_OP_SET, "name", V_STR, "  \t", 0, V_NONE, 0, 0, 0, CRDT_EBLANK},
        {P, CRDT_OP_SET, "name", V_STR, "\xe3\x80\x80", 0, V_NONE, 0, 0, 0, CRDT_EBLANK},
        {P, CRDT_OP_SET, "name", V_STR, " 王芳\xe3\x80\x80", 0, V_NONE, 0, 0, 0, 0},
        {H, CRDT_OP_SET, "address", V_STR, "", 0, V_NONE, 0, 0, 0, CRDT_EBLANK},
        {H, CRDT_OP_SET, "community", V_STR, " ", 0, V_NONE, 0, 0, 0, CRDT_EBLANK},
        {H, CRDT_OP_SET, "grid", V_STR, "", 0, V_NONE, 0, 0, 0, CRDT_EBLANK},
        {H, CRDT_OP_SET, "note", V_STR, "", 0, V_NONE, 0, 0, 0, 0},
        /* mv: obs allowed */
        {P, CRDT_OP_SET, "name", V_STR, "张三", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_SET, "name", V_STR, "张三", 0, V_NONE, 0, 0, 4, 0},
        {P, CRDT_OP_SET, "name", V_STR, "张三", 0, V_NONE, 0, 0, -1, 0}, /* the server's dot */
        {P, CRDT_OP_SET, "name", V_STR, "张三", 0, V_NONE, 0, 0, -2, CRDT_EOBS},
        {P, CRDT_OP_REM, "name", V_STR, "张三", 0, V_NONE, 0, 0, 1, CRDT_EOP},
        {P, CRDT_OP_SET, "id_number", V_STR, ID_OK, 0, V_NONE, 0, 0, 1, 0},
        {P, CRDT_OP_SET, "id_number", V_STR, ID_BAD, 0, V_NONE, 0, 0, 0, CRDT_EIDNUM},
        {P, CRDT_OP_SET, "id_number", V_STR, "11010519491231002x", 0, V_NONE, 0, 0, 0, CRDT_EIDNUM},
        {P, CRDT_OP_SET, "gender", V_STR, "女", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_SET, "gender", V_STR, "F", 0, V_NONE, 0, 0, 0, CRDT_EENUM},
        {P, CRDT_OP_SET, "birth_date", V_STR, "1949-12-31", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_SET, "birth_date", V_STR, "2023-02-29", 0, V_NONE, 0, 0, 0, CRDT_EDATE},
        {P, CRDT_OP_SET, "life_status", V_STR, "转职工医保", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_SET, "insurance_type", V_STR, "城乡居民", 0, V_NONE, 0, 0, 2, 0},
        /* keyed mv */
        {P, CRDT_OP_SET, "payment", V_STR, "已缴费", 0, V_INT, 0, 2026, 0, 0},
        {P, CRDT_OP_SET, "payment", V_STR, "代缴", 0, V_INT, 0, 2000, 3, 0},
        {P, CRDT_OP_SET, "payment", V_STR, "代缴", 0, V_INT, 0, 2100, 0, 0},
        {P, CRDT_OP_SET, "payment", V_STR, "已缴费", 0, V_NONE, 0, 0, 0, CRDT_EKEY},
        {P, CRDT_OP_SET, "payment", V_STR, "已缴费", 0, V_INT, 0, 1999, 0, CRDT_EKEY},
        {P, CRDT_OP_SET, "payment", V_STR, "已缴费", 0, V_INT, 0, 2101, 0, CRDT_EKEY},
        {P, CRDT_OP_SET, "payment", V_STR, "已缴费", 0, V_STR, "2026", 0, 0, CRDT_EKEY},
        {P, CRDT_OP_SET, "payment", V_STR, "已缴费", 0, V_HEX, "cd 07 ea", 0, 0, 0},
        {P, CRDT_OP_SET, "payment", V_STR, "已缴费", 0, V_HEX, "cf 00 00 00 00 00 00 07 ea", 0, 0,
         CRDT_EKEY}, /* non-canonical key */
        {P, CRDT_OP_SET, "payment", V_STR, "paid", 0, V_INT, 0, 2026, 0, CRDT_EENUM},
        {P, CRDT_OP_SET, "payment", V_INT, NULL, 1, V_INT, 0, 2026, 0, CRDT_EVALUE},
        /* set add / rem */
        {P, CRDT_OP_ADD, "tags", V_STR, "低保", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_ADD, "tags", V_STR, "60岁以上无收入", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_ADD, "tags", V_STR, "低保", 0, V_NONE, 0, 0, 1, CRDT_EOBS},
        {P, CRDT_OP_ADD, "tags", V_STR, "富人", 0, V_NONE, 0, 0, 0, CRDT_EENUM},
        {P, CRDT_OP_ADD, "tags", V_NONE, NULL, 0, V_NONE, 0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_REM, "tags", V_STR, "低保", 0, V_NONE, 0, 0, 2, 0},
        {P, CRDT_OP_REM, "tags", V_STR, "低保", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_REM, "tags", V_STR, "低保", 0, V_NONE, 0, 0, -1, 0}, /* the server's dot */
        {P, CRDT_OP_REM, "tags", V_STR, "富人", 0, V_NONE, 0, 0, 1, CRDT_EENUM},
        {P, CRDT_OP_SET, "tags", V_STR, "低保", 0, V_NONE, 0, 0, 0, CRDT_EOP},
        {P, CRDT_OP_ADD, "tags", V_STR, "低保", 0, V_INT, 0, 2026, 0, CRDT_EKEY},
        {P, CRDT_OP_ADD, "paid_years", V_INT, NULL, 2025, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_ADD, "paid_years", V_INT, NULL, 1999, V_NONE, 0, 0, 0, CRDT_ERANGE},
        {P, CRDT_OP_ADD, "paid_years", V_INT, NULL, 2101, V_NONE, 0, 0, 0, CRDT_ERANGE},
        {P, CRDT_OP_ADD, "paid_years", V_STR, "2025", 0, V_NONE, 0, 0, 0, CRDT_EVALUE},
        /* log app */
        {P, CRDT_OP_APP, "visits", V_MAP, "date=2026-09-12;method=上门走访", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_APP, "visits", V_MAP,
         "date=2026-09-12;method=代办事项;result=已完成;service=代缴 2027 年度医保;note=无", 0,
         V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_APP, "visits", V_MAP, "method=上门走访", 0, V_NONE, 0, 0, 0, CRDT_EMISSING},
        {P, CRDT_OP_APP, "visits", V_MAP, "date=2026-09-12", 0, V_NONE, 0, 0, 0, CRDT_EMISSING},
        {P, CRDT_OP_APP, "visits", V_MAP, "date=2026-09-12;method=上门走访;who=me", 0, V_NONE, 0,
         0, 0, CRDT_EUNKNOWNKEY},
        {P, CRDT_OP_APP, "visits", V_MAP, "date=2026-09-31;method=上门走访", 0, V_NONE, 0, 0, 0,
         CRDT_EDATE},
        {P, CRDT_OP_APP, "visits", V_MAP, "date=#20260912;method=上门走访", 0, V_NONE, 0, 0, 0,
         CRDT_EVALUE},
        {P, CRDT_OP_APP, "visits", V_MAP, "date=2026-09-12;method=飞鸽传书", 0, V_NONE, 0, 0, 0,
         CRDT_EENUM},
        {P, CRDT_OP_APP, "visits", V_MAP, "date=2026-09-12;method=上门走访;note=?t", 0, V_NONE,
         0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_APP, "visits", V_MAP, "date=2026-09-12;method=上门走访;service=" LONG201, 0,
         V_NONE, 0, 0, 0, CRDT_ETEXT},
        {P, CRDT_OP_APP, "visits", V_MAP, "", 0, V_NONE, 0, 0, 0, CRDT_EMISSING},
        {P, CRDT_OP_APP, "visits", V_STR, "2026-09-12", 0, V_NONE, 0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_APP, "visits", V_MAP, "date=2026-09-12;method=上门走访", 0, V_NONE, 0, 0, 1,
         CRDT_EOBS},
        {P, CRDT_OP_SET, "visits", V_MAP, "date=2026-09-12;method=上门走访", 0, V_NONE, 0, 0, 0,
         CRDT_EOP},
        {H, CRDT_OP_APP, "visits", V_MAP, "date=2026-09-12;method=电话随访;result=无人在家", 0,
         V_NONE, 0, 0, 0, 0},
        {H, CRDT_OP_APP, "visits", V_MAP, "date=2026-09-12;method=电话随访;service=x", 0, V_NONE,
         0, 0, 0, CRDT_EUNKNOWNKEY}, /* household visits have no service */
        /* counter inc */
        {P, CRDT_OP_INC, "errands_done", V_INT, NULL, 1, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_INC, "errands_done", V_INT, NULL, -1, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_INC, "errands_done", V_INT, NULL, 100, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_INC, "errands_done", V_INT, NULL, -100, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_INC, "errands_done", V_INT, NULL, 101, V_NONE, 0, 0, 0, CRDT_ERANGE},
        {P, CRDT_OP_INC, "errands_done", V_INT, NULL, -101, V_NONE, 0, 0, 0, CRDT_ERANGE},
        {P, CRDT_OP_INC, "errands_done", V_INT, NULL, 0, V_NONE, 0, 0, 0, CRDT_ERANGE},
        {P, CRDT_OP_INC, "errands_done", V_INT, NULL, INT64_MIN, V_NONE, 0, 0, 0, CRDT_ERANGE},
        {P, CRDT_OP_INC, "errands_done", V_INT, NULL, INT64_MAX, V_NONE, 0, 0, 0, CRDT_ERANGE},
        {P, CRDT_OP_INC, "errands_done", V_STR, "1", 0, V_NONE, 0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_INC, "errands_done", V_NONE, NULL, 0, V_NONE, 0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_INC, "errands_done", V_INT, NULL, 1, V_NONE, 0, 0, 1, CRDT_EOBS},
        {P, CRDT_OP_SET, "errands_done", V_INT, NULL, 1, V_NONE, 0, 0, 0, CRDT_EOP},
        {P, CRDT_OP_INC, "note", V_INT, NULL, 1, V_NONE, 0, 0, 0, CRDT_EOP},
        /* stage raise */
        {P, CRDT_OP_RAISE, "review", V_STR, "社区已初审", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_RAISE, "review", V_STR, "待初审", 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_RAISE, "review", V_STR, "已完成", 0, V_NONE, 0, 0, 0, CRDT_EENUM},
        {P, CRDT_OP_RAISE, "review", V_INT, NULL, 1, V_NONE, 0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_RAISE, "review", V_STR, "待初审", 0, V_NONE, 0, 0, 1, CRDT_EOBS},
        {P, CRDT_OP_SET, "review", V_STR, "待初审", 0, V_NONE, 0, 0, 0, CRDT_EOP},
        {P, CRDT_OP_RAISE, "note", V_STR, "待初审", 0, V_NONE, 0, 0, 0, CRDT_EOP},
        /* record-level del / undel */
        {P, CRDT_OP_DEL, NULL, V_NONE, NULL, 0, V_NONE, 0, 0, 0, 0},
        {H, CRDT_OP_UNDEL, NULL, V_NONE, NULL, 0, V_NONE, 0, 0, 0, 0},
        {P, CRDT_OP_DEL, "note", V_NONE, NULL, 0, V_NONE, 0, 0, 0, CRDT_EOP},
        {P, CRDT_OP_DEL, NULL, V_BOOL, NULL, 1, V_NONE, 0, 0, 0, CRDT_EVALUE},
        {P, CRDT_OP_DEL, NULL, V_NONE, NULL, 0, V_INT, 0, 2026, 0, CRDT_EKEY},
        {P, CRDT_OP_UNDEL, NULL, V_NONE, NULL, 0, V_NONE, 0, 0, 1, CRDT_EOBS},
        /* fields and op codes */
        {P, CRDT_OP_SET, "nosuch", V_STR, "x", 0, V_NONE, 0, 0, 0, CRDT_EFIELD},
        {P, CRDT_OP_SET, "address", V_STR, "x", 0, V_NONE, 0, 0, 0, CRDT_EFIELD}, /* household's */
        {P, CRDT_OP_SET, NULL, V_STR, "x", 0, V_NONE, 0, 0, 0, CRDT_EFIELD},
        {P, 0, "note", V_STR, "x", 0, V_NONE, 0, 0, 0, CRDT_EOPCODE},
        {P, 99, "note", V_STR, "x", 0, V_NONE, 0, 0, 0, CRDT_EOPCODE},
        /* a value that is not canonical bytes gives the parser's code */
        {P, CRDT_OP_SET, "note", V_HEX, "d9 01 61", 0, V_NONE, 0, 0, 0, CRDT_ENONCANON},
        {P, CRDT_OP_SET, "note", V_HEX, "a3 61", 0, V_NONE, 0, 0, 0, CRDT_ETRUNC},
        {P, CRDT_OP_SET, "note", V_HEX, "91 01", 0, V_NONE, 0, 0, 0, CRDT_ETYPE},
    };
    int counts[2] = {0, 0};
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        int err_op = 42;
        int rc = run_case(&c[i], &err_op);
        if (rc != c[i].want)
            fail_msg("case %zu (%s.%s op %d): got %d (%s), want %d (%s)", i, c[i].kind,
                     c[i].field ? c[i].field : "-", c[i].code, rc, crdt_strerror(rc),
                     c[i].want, crdt_strerror(c[i].want));
        assert_int_equal(err_op, rc ? 0 : -1);
        counts[rc != 0]++;
    }
    /* Both sides are well covered. */
    fprintf(stderr, "check_delta cases: %d good, %d refused\n", counts[0], counts[1]);
    assert_true(counts[0] >= 30);
    assert_true(counts[1] >= 60);
}

static void test_check_delta_level(void **state)
{
    (void)state;
    crdt_buf v1 = {0}, v2 = {0};
    crdt_op ops[3] = {{0}};
    int err_op;
    assert_int_equal(crdt_val_put_str(&v1, "张三", strlen("张三")), 0);
    assert_int_equal(crdt_val_put_str(&v2, "12345", 5), 0);
    ops[0] = (crdt_op){.code = CRDT_OP_SET, .field = "name", .field_len = 4,
                       .val = {v1.p, (uint32_t)v1.n}};
    ops[1] = (crdt_op){.code = CRDT_OP_SET, .field = "note", .field_len = 4,
                       .val = {v1.p, (uint32_t)v1.n}};
    ops[2] = (crdt_op){.code = CRDT_OP_SET, .field = "phone", .field_len = 5,
                       .val = {v2.p, (uint32_t)v2.n}};
    crdt_delta d = {.dev = 1, .epoch = 1, .seq = 1, .kind = "person", .kind_len = 6,
                    .id = "p1", .id_len = 2, .n_ops = 2, .ops = ops};
    assert_int_equal(crdt_schema_check_delta(yibao, &d, &err_op), 0);
    assert_int_equal(err_op, -1);
    d.n_ops = 3; /* the third op's phone is bad: err_op names it */
    assert_int_equal(crdt_schema_check_delta(yibao, &d, &err_op), CRDT_EPHONE);
    assert_int_equal(err_op, 2);
    assert_int_equal(crdt_schema_check_delta(yibao, &d, NULL), CRDT_EPHONE);
    d.kind = "animal";
    d.kind_len = 6;
    assert_int_equal(crdt_schema_check_delta(yibao, &d, &err_op), CRDT_EKIND);
    assert_int_equal(err_op, -1);
    d.kind = "personnel"; /* prefix match is no match */
    d.kind_len = 9;
    assert_int_equal(crdt_schema_check_delta(yibao, &d, &err_op), CRDT_EKIND);
    d.kind = "person";
    d.kind_len = 6;
    d.n_ops = 0;
    assert_int_equal(crdt_schema_check_delta(yibao, &d, &err_op), CRDT_ENOOPS);
    assert_int_equal(err_op, -1);
    assert_int_equal(crdt_schema_check_delta(NULL, &d, &err_op), CRDT_EINVAL);
    assert_int_equal(crdt_schema_check_delta(yibao, NULL, &err_op), CRDT_EINVAL);
    /* Field names are length-counted: "name" inside "names" is not "names". */
    ops[0].field = "names";
    ops[0].field_len = 5;
    d.n_ops = 1;
    assert_int_equal(crdt_schema_check_delta(yibao, &d, &err_op), CRDT_EFIELD);
    ops[0].field_len = 4;
    assert_int_equal(crdt_schema_check_delta(yibao, &d, &err_op), 0);
    crdt_buf_free(&v1);
    crdt_buf_free(&v2);
}

/* One delta through the real codec: encode, decode, check against yibao. */
static void test_check_decoded_delta(void **state)
{
    (void)state;
    crdt_buf k = {0}, pay = {0}, visit = {0}, tag = {0}, enc = {0};
    assert_int_equal(crdt_val_put_int(&k, 2026), 0);
    assert_int_equal(crdt_val_put_str(&pay, "代缴", strlen("代缴")), 0);
    assert_int_equal(crdt_val_put_str(&tag, "低保", strlen("低保")), 0);
    const char *keys[] = {"method", "date", "service"};
    crdt_scalar vals[] = {{.t = CRDT_V_STR, .s = "代办事项", .len = 12},
                          {.t = CRDT_V_STR, .s = "2026-10-08", .len = 10},
                          {.t = CRDT_V_STR, .s = "代缴医保", .len = 12}};
    assert_int_equal(crdt_val_put_map(&visit, keys, vals, 3), 0);
    crdt_dot seen[1] = {{7, 3}};
    crdt_op ops[3] = {
        {.code = CRDT_OP_SET, .field = "payment", .field_len = 7,
         .key = {k.p, (uint32_t)k.n}, .val = {pay.p, (uint32_t)pay.n}, .n_obs = 1, .obs = seen},
        {.code = CRDT_OP_ADD, .field = "tags", .field_len = 4, .val = {tag.p, (uint32_t)tag.n}},
        {.code = CRDT_OP_APP, .field = "visits", .field_len = 6,
         .val = {visit.p, (uint32_t)visit.n}},
    };
    crdt_delta d = {.dev = 7, .epoch = 1, .seq = 4, .hlc = CRDT_HLC_MAKE(1760000000000ull, 2),
                    .kind = "person", .kind_len = 6, .id = "p-C07-0042", .id_len = 10,
                    .n_ops = 3, .ops = ops};
    int err_op;
    assert_int_equal(crdt_schema_check_delta(yibao, &d, &err_op), 0);
    assert_int_equal(crdt_delta_encode(&d, &enc), 0);
    crdt_arena *a = crdt_arena_new(0);
    assert_non_null(a);
    crdt_delta got;
    assert_int_equal(crdt_delta_decode(enc.p, enc.n, &crdt_limits_default, a, &got, &err_op), 0);
    assert_int_equal(crdt_schema_check_delta(yibao, &got, &err_op), 0);
    assert_int_equal(err_op, -1);
    crdt_arena_free(a);
    crdt_buf_free(&k);
    crdt_buf_free(&pay);
    crdt_buf_free(&visit);
    crdt_buf_free(&tag);
    crdt_buf_free(&enc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_yibao_loads),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_bad_fields),
        cmocka_unit_test(test_bad_tops),
        cmocka_unit_test(test_validate_direct),
        cmocka_unit_test(test_check_delta_table),
        cmocka_unit_test(test_check_delta_level),
        cmocka_unit_test(test_check_decoded_delta),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
