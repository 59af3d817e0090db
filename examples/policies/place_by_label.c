/* Placement by replica label: replicas labelled "tier": "fast" (see
 * `policies.replica_labels` in the config) score 1000, others 0; free slots
 * break ties. The host still offers only replicas that may run the task.
 * Build: llorch-policy build place_by_label.c -o place_by_label.wasm */
#define LLORCH_NO_ADMISSION
#include "llorch_policy.h"

int llorch_placement(const char *in, int len, char *out, int cap) {
    llorch_writer w = {out, cap, 0};
    char id[128];
    int first = 1;
    llorch_put(&w, "{\"scores\":{");
    int p = llorch_json_key(in, len, 0, "replica_id");
    while (p >= 0) {
        int next = llorch_json_key(in, len, p, "replica_id");
        int end = next >= 0 ? next : len; /* this replica's fields lie in [p, end) */
        if (llorch_json_str_at(in, len, p, id, sizeof id) < 0) return -1;
        long long score = llorch_json_int(in, end, p, "free_slots", 0);
        if (llorch_json_str_eq(in, end, p, "tier", "fast")) score += 1000;
        if (!first) llorch_put(&w, ",");
        first = 0;
        llorch_put(&w, "\"");
        llorch_put(&w, id);
        llorch_put(&w, "\":");
        llorch_put_int(&w, score);
        p = next;
    }
    llorch_put(&w, "}}");
    return llorch_done(&w);
}
