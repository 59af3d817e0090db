/* Shed batch: a `batch` task is rejected with a retry hint while its pool's
 * queue is at least SHED_PCT percent full; interactive work is never shed.
 * Build: llorch-policy build shed_batch.c -o shed_batch.wasm */
#define LLORCH_NO_PLACEMENT
#include "llorch_policy.h"

#ifndef SHED_PCT
#define SHED_PCT 75
#endif
#ifndef RETRY_MS
#define RETRY_MS 2000
#endif

int llorch_admission(const char *in, int len, char *out, int cap) {
    llorch_writer w = {out, cap, 0};
    long long queued = llorch_json_int(in, len, 0, "queued", 0);
    long long capacity = llorch_json_int(in, len, 0, "capacity", 0);
    if (llorch_json_str_eq(in, len, 0, "priority", "batch") && queued * 100 >= SHED_PCT * capacity) {
        llorch_put(&w, "{\"action\":\"reject\",\"reason\":\"batch-shed-75pct\",\"retry_after_ms\":");
        llorch_put_int(&w, RETRY_MS);
        llorch_put(&w, "}");
    } else {
        llorch_put(&w, "{\"action\":\"admit\"}");
    }
    return llorch_done(&w);
}
