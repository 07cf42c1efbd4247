/*
 * validate.c — checks of field values that have a fixed national format:
 * resident ID numbers (GB 11643-1999), mainland phone numbers, and dates.
 *
 * GB 11643-1999: 18 characters = 6-digit region code, 8-digit birth date
 * YYYYMMDD, 3-digit sequence (odd for men, even for women), 1 check
 * character.  The check character is ISO 7064 MOD 11-2: weights
 * 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2 over the first 17 digits, sum mod 11
 * indexes "10X98765432".  Doorstep accepts only the uppercase 'X'
 * (canonical values: one spelling per number), requires the birth date to
 * be a real Gregorian date in 1900..2100 and the region not to be 000000.
 * Whether the region code exists or the birth date is in the past is not
 * checked: crdt/ reads no clock and carries no region tables.
 *
 * Invariants: every function reads exactly s[0..len) (or the 17 bytes of
 * crdt_idnum_check_char), allocates nothing and has no state.
 */
#include "crdt.h"

#include <string.h>

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static bool all_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_digit(s[i])) return false;
    return true;
}

static int num(const char *s, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) v = v * 10 + (s[i] - '0');
    return v;
}

static bool leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

/* y, m, d form a real date in 1900..2100. */
static bool ymd_ok(int y, int m, int d)
{
    static const int dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1900 || y > 2100 || m < 1 || m > 12 || d < 1) return false;
    return d <= dim[m - 1] + (m == 2 && leap(y));
}

char crdt_idnum_check_char(const char *s17)
{
    static const int w[17] = {7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2};
    static const char map[] = "10X98765432";
    int sum = 0;
    if (!s17) return 0;
    for (int i = 0; i < 17; i++) {
        if (!is_digit(s17[i])) return 0; /* also stops at a NUL */
        sum += (s17[i] - '0') * w[i];
    }
    return map[sum % 11];
}

int crdt_check_idnum(const char *s, size_t len)
{
    if (!s || len != 18 || !all_digits(s, 17)) return CRDT_EIDNUM;
    if (!is_digit(s[17]) && s[17] != 'X') return CRDT_EIDNUM;
    if (memcmp(s, "000000", 6) == 0) return CRDT_EIDNUM;
    if (!ymd_ok(num(s + 6, 4), num(s + 10, 2), num(s + 12, 2))) return CRDT_EIDNUM;
    if (crdt_idnum_check_char(s) != s[17]) return CRDT_EIDNUM;
    return CRDT_OK;
}

/* Landline: "0" + 2..3 more area digits, optional "-", 7..8 digits. */
static bool landline_ok(const char *s, size_t len)
{
    if (len < 1 || s[0] != '0') return false;
    for (size_t area = 3; area <= 4; area++) {
        size_t i = area, rest;
        if (len < area || !all_digits(s, area)) continue;
        if (i < len && s[i] == '-') i++;
        rest = len - i;
        if ((rest == 7 || rest == 8) && all_digits(s + i, rest)) return true;
    }
    return false;
}

int crdt_check_phone(const char *s, size_t len)
{
    if (!s) return CRDT_EPHONE;
    if (len == 11 && s[0] == '1' && s[1] >= '3' && s[1] <= '9' && all_digits(s, 11))
        return CRDT_OK;
    return landline_ok(s, len) ? CRDT_OK : CRDT_EPHONE;
}

int crdt_check_date(const char *s, size_t len)
{
    if (!s || len != 10 || s[4] != '-' || s[7] != '-') return CRDT_EDATE;
    if (!all_digits(s, 4) || !all_digits(s + 5, 2) || !all_digits(s + 8, 2))
        return CRDT_EDATE;
    return ymd_ok(num(s, 4), num(s + 5, 2), num(s + 8, 2)) ? CRDT_OK : CRDT_EDATE;
}

int64_t crdt_days_from_civil(int y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

void crdt_civil_from_days(int64_t z, int *y, unsigned *m, unsigned *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const int64_t yy = (int64_t)yoe + era * 400;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int)(yy + (*m <= 2));
}

int crdt_date_days(const char *s, size_t len, int64_t *days)
{
    int rc = crdt_check_date(s, len);
    if (rc) return rc;
    *days = crdt_days_from_civil((int)num(s, 4), (unsigned)num(s + 5, 2), (unsigned)num(s + 8, 2));
    return CRDT_OK;
}
