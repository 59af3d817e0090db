/* Tenant clamp: an `interactive` task whose tenant already holds more than
 * SHARE_PCT percent of its pool's work (queued + running) is rewritten to
 * `batch`, so one tenant cannot crowd the interactive lane.
 * Build: llorch-policy build tenant_clamp.c -o tenant_clamp.wasm */
#define LLORCH_NO_PLACEMENT
#include "llorch_policy.h"

#ifndef SHARE_PCT
#define SHARE_PCT 50
#endif

int llorch_admission(const char *in, int len, char *out, int cap) {
    llorch_writer w = {out, cap, 0};
    long long mine = llorch_json_int(in, len, 0, "pool_in_flight", 0);
    long long total = llorch_json_int(in, len, 0, "queued", 0) + llorch_json_int(in, len, 0, "running", 0);
    if (total < 1) total = 1;
    if (llorch_json_str_eq(in, len, 0, "priority", "interactive") && mine * 100 > SHARE_PCT * total) {
        llorch_put(&w, "{\"action\":\"rewrite\",\"priority\":\"batch\",\"reason\":\"tenant-over-share\"}");
    } else {
        llorch_put(&w, "{\"action\":\"admit\"}");
    }
    return llorch_done(&w);
}
