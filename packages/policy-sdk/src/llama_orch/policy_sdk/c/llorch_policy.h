/* llorch_policy.h: the llama-orch policy ABI v1 for C (see policy_sdk/abi.py).
 *
 * Include this header in exactly one .c file and define the hooks you use:
 *
 *   int llorch_admission(const char *in, int in_len, char *out, int out_cap);
 *   int llorch_placement(const char *in, int in_len, char *out, int out_cap);
 *
 * Each gets the snapshot JSON and writes the decision JSON into `out`,
 * returning its length (0 or less: no decision, a typed failure on the host).
 * Define LLORCH_NO_ADMISSION / LLORCH_NO_PLACEMENT for a hook you leave out.
 * Needs no libc: build with `llorch-policy build policy.c`.
 *
 * The JSON helpers below are deliberately small: they find the first
 * occurrence of "key": at or after a position, which is enough for the flat
 * snapshots of ABI v1 (keys are unique within an object).
 */
#ifndef LLORCH_POLICY_H
#define LLORCH_POLICY_H

#define LLORCH_ABI_VERSION 1
#define LLORCH_HOOK_ADMISSION 1
#define LLORCH_HOOK_PLACEMENT 2
#ifndef LLORCH_MAX_INPUT
#define LLORCH_MAX_INPUT 65536
#endif
#ifndef LLORCH_MAX_OUTPUT
#define LLORCH_MAX_OUTPUT 8192
#endif

#define LLORCH_EXPORT(name) __attribute__((export_name(name)))

int llorch_admission(const char *in, int in_len, char *out, int out_cap);
int llorch_placement(const char *in, int in_len, char *out, int out_cap);

static char llorch_in_buf[LLORCH_MAX_INPUT];
static char llorch_out_buf[LLORCH_MAX_OUTPUT];

LLORCH_EXPORT("llorch_abi_version") int llorch_abi_version(void) { return LLORCH_ABI_VERSION; }

/* One snapshot at a time: the buffer is reused by every call. */
LLORCH_EXPORT("llorch_alloc") char *llorch_alloc(int len) {
    return (len >= 0 && len <= LLORCH_MAX_INPUT) ? llorch_in_buf : 0;
}

LLORCH_EXPORT("llorch_decide") long long llorch_decide(int hook, const char *in, int len) {
    int n = -1;
#ifndef LLORCH_NO_ADMISSION
    if (hook == LLORCH_HOOK_ADMISSION) n = llorch_admission(in, len, llorch_out_buf, LLORCH_MAX_OUTPUT);
#endif
#ifndef LLORCH_NO_PLACEMENT
    if (hook == LLORCH_HOOK_PLACEMENT) n = llorch_placement(in, len, llorch_out_buf, LLORCH_MAX_OUTPUT);
#endif
    if (n <= 0 || n > LLORCH_MAX_OUTPUT) return 0;
    return ((long long)(unsigned)(unsigned long)llorch_out_buf << 32) | (unsigned)n;
}

/* ---- tiny string and JSON helpers (no libc) ---- */

static inline int llorch_strlen(const char *s) { int n = 0; while (s[n]) n++; return n; }

static inline int llorch_starts(const char *s, int len, const char *lit) {
    int i = 0;
    for (; lit[i]; i++) if (i >= len || s[i] != lit[i]) return 0;
    return 1;
}

/* Offset just after `"key":` (and spaces) at or after `from`, or -1. */
static inline int llorch_json_key(const char *js, int len, int from, const char *key) {
    int k = llorch_strlen(key);
    for (int i = from; i + k + 3 <= len; i++) {
        if (js[i] != '"' || js[i + k + 1] != '"' || js[i + k + 2] != ':') continue;
        int j = 0;
        while (j < k && js[i + 1 + j] == key[j]) j++;
        if (j < k) continue;
        int p = i + k + 3;
        while (p < len && js[p] == ' ') p++;
        return p;
    }
    return -1;
}

/* The integer after "key": (at or after `from`), else `dflt` (also for null). */
static inline long long llorch_json_int(const char *js, int len, int from, const char *key, long long dflt) {
    int p = llorch_json_key(js, len, from, key);
    if (p < 0 || p >= len) return dflt;
    int neg = 0;
    if (js[p] == '-') { neg = 1; p++; }
    if (p >= len || js[p] < '0' || js[p] > '9') return dflt;
    long long v = 0;
    while (p < len && js[p] >= '0' && js[p] <= '9') v = v * 10 + (js[p++] - '0');
    return neg ? -v : v;
}

/* 1 when the string after "key": (at or after `from`) equals `want`. */
static inline int llorch_json_str_eq(const char *js, int len, int from, const char *key, const char *want) {
    int p = llorch_json_key(js, len, from, key);
    if (p < 0 || p >= len || js[p] != '"') return 0;
    int n = llorch_strlen(want);
    return p + n + 2 <= len && llorch_starts(js + p + 1, len - p - 1, want) && js[p + 1 + n] == '"';
}

/* Copy the JSON string starting at `p` (its opening quote) into `dst`
 * (NUL-terminated, no escapes); its length or -1. */
static inline int llorch_json_str_at(const char *js, int len, int p, char *dst, int cap) {
    if (p < 0 || p >= len || js[p] != '"') return -1;
    int n = 0;
    for (p++; p < len && js[p] != '"'; p++) {
        if (js[p] == '\\' || n + 1 >= cap) return -1;
        dst[n++] = js[p];
    }
    dst[n] = 0;
    return n;
}

/* Copy the string after "key": (at or after `from`) into `dst`; its length or -1. */
static inline int llorch_json_str(const char *js, int len, int from, const char *key, char *dst, int cap) {
    return llorch_json_str_at(js, len, llorch_json_key(js, len, from, key), dst, cap);
}

/* A small writer for the decision JSON. */
typedef struct { char *buf; int cap; int len; } llorch_writer;

static inline void llorch_put(llorch_writer *w, const char *s) {
    while (*s) { if (w->len < w->cap) w->buf[w->len] = *s; w->len++; s++; }
}

static inline void llorch_put_int(llorch_writer *w, long long v) {
    char tmp[24]; int n = 0;
    if (v < 0) { llorch_put(w, "-"); v = -v; }
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) { char c[2] = {tmp[--n], 0}; llorch_put(w, c); }
}

/* The written length, or -1 when it did not fit. */
static inline int llorch_done(llorch_writer *w) { return w->len <= w->cap ? w->len : -1; }

#endif
